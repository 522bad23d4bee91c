using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Runtime;

/// <summary>
/// Model offload moves each component to the execution device for its stage and back. Here the execution device is
/// the CPU: the same code path (every weight field replaced by its moved tensor, the old one disposed), checked by
/// bit-identical outputs on the tiny fixtures before, during and after the moves.
/// </summary>
public class OffloadTests
{
    private static readonly OffloadPolicy Policy = new(OffloadMode.Model, CPU);
    private static readonly OffloadPolicy Sequential = new(OffloadMode.Sequential, CPU);

    /// <summary>
    /// Runs <paramref name="run"/> in a sequential-offload stage, counting the blocks moved and checking that, while a
    /// block runs, its weights are fresh tensors (moved for it) and the trunk's were moved once for the stage.
    /// </summary>
    private static Tensor RunSequential(ISequentialModel model, Func<Tensor> run, out int blockMoves)
    {
        var blockTensors = new HashSet<Tensor>(model.OffloadBlocks.SelectMany(ModuleTensors.Enumerate), ReferenceEqualityComparer.Instance);
        var trunkBefore = ModuleTensors.Enumerate(model).Where(t => !blockTensors.Contains(t)).ToList();
        Assert.NotEmpty(trunkBefore);
        int moves = 0;
        Tensor result;
        using (Sequential.Stage(model))
        {
            Assert.All(trunkBefore, t => Assert.True(t.IsInvalid, "the trunk was not moved for the stage"));
            var inner = model.OnBlock!;
            model.OnBlock = block =>
            {
                var before = ModuleTensors.Enumerate(block);
                var handle = inner(block);
                Assert.All(before, t => Assert.True(t.IsInvalid, "a block was not moved before its forward"));
                moves++;
                return handle;
            };
            result = run();
        }
        Assert.Null(model.OnBlock);
        blockMoves = moves;
        return result;
    }

    private static void AssertBitIdentical(Tensor expected, Tensor actual)
    {
        Assert.Equal(expected.shape, actual.shape);
        Assert.Equal(expected.dtype, actual.dtype);
        Assert.True(expected.eq(actual).all().item<bool>(), $"max |Δ| = {(expected - actual).abs().max().item<float>()}");
    }

    /// <summary>Every tensor the model holds was replaced (and the old ones freed), and none is missing from the walk.</summary>
    private static void AssertAllMoved(object model, string weightFile, Action move, long? expectedNumel = null)
    {
        var before = ModuleTensors.Enumerate(model);
        long numel = before.Sum(t => t.NumberOfElements);
        if (expectedNumel is { } n) Assert.Equal(n, numel);
        else
        {
            using var f = SafeTensorsFile.Open(weightFile);
            Assert.Equal(f.Tensors.Values.Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b)), numel);
        }
        move();
        var after = ModuleTensors.Enumerate(model);
        Assert.Equal(before.Count, after.Count);
        Assert.All(before, t => Assert.True(t.IsInvalid, "an old tensor was not disposed"));
        Assert.All(after, t => Assert.False(t.IsInvalid));
        Assert.Equal(numel, after.Sum(t => t.NumberOfElements));
    }

    [Fact]
    public void TransformerGivesBitIdenticalOutputAfterMoves()
    {
        using var r = new Reference("expected/transformer_lcm");
        string dir = Fixtures.Path("tiny-pixart-lcm", "transformer");
        using var model = PixArtTransformer2DModel.FromFolder(dir);
        Tensor Run()
        {
            using var scope = NewDisposeScope();
            return model.forward(r["same_masks.hidden_states"], r["same_masks.encoder_hidden_states"], r["same_masks.encoder_attention_mask"],
                r["same_masks.timestep"], r["same_masks.added_cond_kwargs.resolution"], r["same_masks.added_cond_kwargs.aspect_ratio"]).MoveToOuterDisposeScope();
        }
        using var reference = Run();
        AssertAllMoved(model, Path.Combine(dir, "diffusion_pytorch_model.safetensors"), () => model.MoveTo(CPU));
        using var afterMove = Run();
        AssertBitIdentical(reference, afterMove);
        using (Policy.Stage(model))
        {
            using var inStage = Run();
            AssertBitIdentical(reference, inStage);
        }
        using var afterStage = Run();
        AssertBitIdentical(reference, afterStage);
        Assert.Equal(DeviceType.CPU, model.Device.type);
        using var sequential = RunSequential(model, Run, out int moves);
        AssertBitIdentical(reference, sequential);
        Assert.Equal(model.transformer_blocks.Length, moves);
        using var afterSequential = Run();
        AssertBitIdentical(reference, afterSequential);
        using var expected = r["same_masks.output"];
        Compare.Close(expected, afterStage, 1e-5, "transformer output after offload");
    }

    [Fact]
    public void T5GivesBitIdenticalOutputAfterMoves()
    {
        using var r = new Reference("expected/t5_encoder");
        string dir = Fixtures.Path("tiny-pixart", "text_encoder");
        using var model = T5EncoderModel.FromFolder(dir, null, ScalarType.Float32);
        Tensor Run()
        {
            using var scope = NewDisposeScope();
            return model.forward(r["input_ids"], r["attention_mask"]).MoveToOuterDisposeScope();
        }
        using var reference = Run();
        // shared.weight and encoder.embed_tokens.weight are one tensor (tied): the walk counts it once.
        long expected;
        using (var f = SafeTensorsFile.Open(Path.Combine(dir, "model.safetensors")))
            expected = f.Tensors.Where(kv => kv.Key != "encoder.embed_tokens.weight").Sum(kv => kv.Value.Shape.Aggregate(1L, (a, b) => a * b));
        AssertAllMoved(model, "", () => model.MoveTo(CPU), expected);
        using var afterMove = Run();
        AssertBitIdentical(reference, afterMove);
        using (Policy.Stage(model)) { using var inStage = Run(); AssertBitIdentical(reference, inStage); }
        using var sequential = RunSequential(model, Run, out int moves);
        AssertBitIdentical(reference, sequential);
        Assert.Equal(model.encoder.block.Length + 1, moves);   // block 0 also for the position bias
        using var afterSequential = Run();
        AssertBitIdentical(reference, afterSequential);
        using var expectedOut = r["last_hidden_state"];
        Compare.Close(expectedOut, reference, 1e-5, "t5 output");
    }

    [Fact]
    public void VaeGivesBitIdenticalDecodeAfterMoves()
    {
        using var r = new Reference("expected/vae");
        string dir = Fixtures.Path("tiny-pixart", "vae");
        using var vae = AutoencoderKL.FromFolder(dir, null, ScalarType.Float32);
        using var latents = r["decode.latents"];
        using var reference = vae.Decode(latents);
        AssertAllMoved(vae, Path.Combine(dir, "diffusion_pytorch_model.safetensors"), () => vae.MoveTo(CPU));
        using var afterMove = vae.Decode(latents);
        AssertBitIdentical(reference, afterMove);
        using (Policy.Stage(vae)) { using var inStage = vae.Decode(latents); AssertBitIdentical(reference, inStage); }
        using (Sequential.Stage(vae)) { using var inStage = vae.Decode(latents); AssertBitIdentical(reference, inStage); }   // moves whole
        using var expected = r["decode.sample"];
        Compare.Close(expected, reference, 1e-4, "vae decode");
    }

    [Fact]
    public void NoOffloadLeavesTheModelAlone()
    {
        using var vae = AutoencoderKL.FromFolder(Fixtures.Path("tiny-pixart", "vae"), null, ScalarType.Float32);
        var before = ModuleTensors.Enumerate(vae);
        using (new OffloadPolicy(OffloadMode.None, CPU).Stage(vae)) { }
        Assert.Equal(before, ModuleTensors.Enumerate(vae));
        Assert.All(before, t => Assert.False(t.IsInvalid));
    }
}
