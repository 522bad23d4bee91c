using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp;

/// <summary>A model whose weights can be moved between devices (T5EncoderModel, PixArtTransformer2DModel, AutoencoderKL).</summary>
internal interface IMovableModel
{
    /// <summary>Moves every weight to <paramref name="device"/>, disposing the old tensors.</summary>
    void MoveTo(Device device);
}

/// <summary>Called by a model's forward pass around each of its blocks; the handle returned is disposed after the block (sequential offload).</summary>
internal delegate IDisposable? BlockScope(object block);

/// <summary>A model whose forward pass runs a list of blocks that sequential offload moves one at a time (T5EncoderModel, PixArtTransformer2DModel).</summary>
internal interface ISequentialModel : IMovableModel
{
    /// <summary>The blocks, in the order the forward pass runs them.</summary>
    IReadOnlyList<object> OffloadBlocks { get; }
    /// <summary>Set by <see cref="OffloadPolicy.Stage"/> for sequential offload; null otherwise.</summary>
    BlockScope? OnBlock { get; set; }
}

/// <summary>Where the pipeline's components live between their stages (the model card's CPU offload; <c>--offload</c>).</summary>
public enum OffloadMode
{
    /// <summary>Every component is loaded on the execution device and stays there: fastest, needs memory for all of them (PixArt-α 1024px in fp16: ≈ 9.5 GB for T5-XXL + 1.2 GB transformer + 0.2 GB VAE).</summary>
    None,
    /// <summary>
    /// Each component lives in CPU memory and moves to the GPU for its stage only — T5 to encode the prompt, the
    /// transformer for the denoising loop, the VAE to decode — and back after it, as diffusers'
    /// <c>enable_model_cpu_offload</c>. Peak GPU memory is the largest component (T5-XXL) plus activations; each stage
    /// pays one host→device copy of its weights (≈ 10 GB/s over PCIe 4: ~1 s for T5-XXL in fp16).
    /// </summary>
    Model,
    /// <summary>
    /// Block by block: for T5 and the transformer, everything but the blocks (embeddings, norms, projections) moves
    /// to the GPU for the stage and each block's weights move just before it runs and back after it, as diffusers'
    /// <c>enable_sequential_cpu_offload</c> (which goes down to each layer) — for GPUs smaller than T5-XXL; every
    /// step copies the whole transformer over the bus, so it is much slower. The VAE (84 M parameters, its
    /// activations dominate) moves whole, as with <see cref="Model"/>.
    /// </summary>
    Sequential,
}

/// <summary>
/// The pipeline's memory policy: where components are placed at load (<see cref="LoadDevice"/>) and what happens around
/// each stage (<see cref="Stage"/>). The same code path runs with any device: with the CPU as execution device a
/// Model-offload run moves CPU → CPU, which the tests use to check that the moves lose nothing.
/// </summary>
internal sealed class OffloadPolicy
{
    public OffloadMode Mode { get; }
    /// <summary>Where the stages run (cuda:N or cpu).</summary>
    public Device ExecutionDevice { get; }

    public OffloadPolicy(OffloadMode mode, Device executionDevice)
    {
        Mode = mode;
        ExecutionDevice = executionDevice;
    }

    /// <summary>The accepted spellings, for help texts.</summary>
    public const string Choices = "none, model or sequential";

    /// <summary>none|model|sequential (case-insensitive); ArgumentException (parameter "--offload") otherwise.</summary>
    public static OffloadMode Parse(string? name) => (name ?? "").Trim().ToLowerInvariant() switch
    {
        "none" => OffloadMode.None,
        "model" => OffloadMode.Model,
        "sequential" => OffloadMode.Sequential,
        _ => throw new ArgumentException($"--offload must be {Choices}, got '{name}'.", "--offload"),
    };

    /// <summary>Where to load the components: the execution device without offload, else the CPU.</summary>
    public Device LoadDevice => Mode == OffloadMode.None ? ExecutionDevice : CPU;

    /// <summary>
    /// Brackets one stage: with Model offload, moves <paramref name="component"/> to the execution device now and back
    /// to the CPU when the returned handle is disposed (<c>using (policy.Stage(vae)) { … decode … }</c>); with
    /// Sequential, moves all but its blocks now and each block around its forward (<see cref="ISequentialModel"/>);
    /// without offload, does nothing. Results computed inside stay on the execution device.
    /// </summary>
    public IDisposable Stage(IMovableModel component)
    {
        if (Mode == OffloadMode.None) return NoOp.Instance;
        if (Mode == OffloadMode.Sequential && component is ISequentialModel seq)
        {
            var blocks = new HashSet<object>(seq.OffloadBlocks, ReferenceEqualityComparer.Instance);
            Models.ModuleTensors.MoveTo(seq, ExecutionDevice, blocks);
            var device = ExecutionDevice;
            seq.OnBlock = block =>
            {
                Models.ModuleTensors.MoveTo(block, device);
                return new Undo(() => Models.ModuleTensors.MoveTo(block, CPU));
            };
            return new Undo(() =>
            {
                seq.OnBlock = null;
                Models.ModuleTensors.MoveTo(seq, CPU, blocks);
            });
        }
        component.MoveTo(ExecutionDevice);
        return new Undo(() => component.MoveTo(CPU));
    }

    private sealed class Undo(Action undo) : IDisposable
    {
        private Action? _undo = undo;
        public void Dispose() => Interlocked.Exchange(ref _undo, null)?.Invoke();
    }

    private sealed class NoOp : IDisposable
    {
        public static readonly NoOp Instance = new();
        public void Dispose() { }
    }
}
