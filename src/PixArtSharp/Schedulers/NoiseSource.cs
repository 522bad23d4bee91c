using static TorchSharp.torch;

namespace PixArtSharp.Schedulers;

/// <summary>
/// Where the pipeline and the stochastic schedulers (LCM, SA-Solver) draw N(0, 1) from. Either one generator for
/// the whole batch — diffusers' single <c>generator</c>, so a batch reproduces diffusers' draws — or one generator
/// per equal group of batch rows, so that independent requests batched together (the server) each get exactly the
/// numbers they would get alone: group g's rows are drawn from generator g with that group's own shape.
/// Draws are float32 on the generator's device (TorchSharp's CPU fp32 randn is bit-identical to PyTorch's; its
/// fp16 one is not), then cast and moved, as diffusers' randn_tensor does.
/// </summary>
internal sealed class NoiseSource
{
    public IReadOnlyList<Generator> Generators { get; }

    public NoiseSource(IReadOnlyList<Generator> generators)
    {
        if (generators.Count == 0) throw new ArgumentException("A noise source needs at least one generator.", nameof(generators));
        Generators = generators;
    }

    /// <summary>A source over one generator, or null (the device's default generator) when it is null.</summary>
    public static NoiseSource? Of(Generator? generator) => generator is null ? null : new NoiseSource([generator]);

    /// <summary>randn(shape) in float32 from the generator(s), then cast to <paramref name="dtype"/> on <paramref name="device"/>.</summary>
    public Tensor Randn(long[] shape, ScalarType dtype, Device device)
    {
        using var scope = NewDisposeScope();
        Tensor noise;
        if (Generators.Count == 1)
        {
            noise = randn(shape, ScalarType.Float32, Generators[0].device, generator: Generators[0]);
        }
        else
        {
            if (shape[0] % Generators.Count != 0)
                throw new ArgumentException($"{shape[0]} batch rows cannot be split evenly over {Generators.Count} generators.", nameof(shape));
            long[] groupShape = [shape[0] / Generators.Count, .. shape[1..]];
            noise = cat(Generators.Select(g => randn(groupShape, ScalarType.Float32, g.device, generator: g).to(device)).ToArray(), 0);
        }
        return noise.to(dtype, device).MoveToOuterDisposeScope();
    }

    /// <summary>Draws with <paramref name="source"/>, or from the default generator of <paramref name="device"/> when null.</summary>
    public static Tensor Randn(NoiseSource? source, long[] shape, ScalarType dtype, Device device)
    {
        if (source is not null) return source.Randn(shape, dtype, device);
        using var scope = NewDisposeScope();
        return randn(shape, ScalarType.Float32, device).to(dtype).MoveToOuterDisposeScope();
    }
}
