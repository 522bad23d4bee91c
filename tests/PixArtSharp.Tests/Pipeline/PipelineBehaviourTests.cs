using PixArtSharp.Pipeline;
using PixArtSharp.Schedulers;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Pipeline;

/// <summary>
/// The pipeline beyond the seven end-to-end cases: encode_prompt, model defaults, the 1-step decision, the per-step
/// callback and cancellation, one generator per prompt, bf16, and diffusers' check_inputs errors.
/// </summary>
public class PipelineBehaviourTests(TinyPipelines fixture, ITestOutputHelper output) : IClassFixture<TinyPipelines>
{
    private static GenerationRequest LcmBasic => new()
    {
        Prompts = ["A small cactus with a happy face in the Sahara desert."],
        NumInferenceSteps = 4,
        GuidanceScale = 0,
        Height = 64,
        Width = 96,
        UseResolutionBinning = false,
        Seed = 0,
    };

    [Fact]
    public void EncodePromptWithGuidanceMatchesDiffusers()
    {
        using var r = new Reference("expected/t5_encoder");
        var prompts = r.Json.GetProperty("prompts").EnumerateArray().Select(p => p.GetString()!).ToList();
        // pipe.encode_prompt([p0, p1], do_classifier_free_guidance=True, negative_prompt="", num_images_per_prompt=2, clean_caption=True)
        var (pos, neg) = fixture.Lcm.EncodePrompt([prompts[0], prompts[1]], true, [""], 2, cleanCaption: true);
        using (pos) using (neg)
        {
            // Two prompts × 2 images: diffusers' mask/embedding order lets a copy see another prompt's padding, so T5
            // runs on every position here and the whole tensors match.
            double e1 = Compare.Close(r["encode_prompt.cfg.prompt_embeds"], pos.Embeds, 1e-5, "prompt_embeds");
            Assert.Equal(r["encode_prompt.cfg.prompt_attention_mask"].data<long>().ToArray(), pos.AttentionMask.data<long>().ToArray());
            double e2 = Compare.Close(r["encode_prompt.cfg.negative_prompt_embeds"], neg!.Embeds, 1e-5, "negative_prompt_embeds");
            Assert.Equal(r["encode_prompt.cfg.negative_prompt_attention_mask"].data<long>().ToArray(), neg.AttentionMask.data<long>().ToArray());
            output.WriteLine($"encode_prompt.cfg: prompt_embeds max|Δ| {e1:E3}, negative {e2:E3}; masks equal");
        }
    }

    [Fact]
    public void EncodePromptWithoutGuidanceMatchesDiffusers()
    {
        using var r = new Reference("expected/t5_encoder");
        var prompt = r.Json.GetProperty("prompts")[2].GetString()!;
        var (pos, neg) = fixture.Lcm.EncodePrompt([prompt], false, cleanCaption: false);
        using (pos)
        {
            Assert.Null(neg);
            double e = Compare.CloseAtTokens(r["encode_prompt.nocfg.prompt_embeds"], pos.Embeds, pos.AttentionMask, 1e-5, "nocfg prompt_embeds");
            Assert.Equal(r["encode_prompt.nocfg.prompt_attention_mask"].data<long>().ToArray(), pos.AttentionMask.data<long>().ToArray());
            output.WriteLine($"encode_prompt.nocfg: max|Δ| {e:E3}");
        }
    }

    [Fact]
    public void WarmUpRunsOneGenerationAndChangesNothingAfter()
    {
        using var pipe = PixArtPipeline.FromPretrained(Fixtures.Path("tiny-pixart-lcm"), new PipelineOptions { PromptCacheEntries = 4 });
        var took = pipe.WarmUp();
        Assert.True(took > TimeSpan.Zero);
        // The warm-up's prompt is neither cached nor counted.
        Assert.Equal(0, pipe.PromptCache!.Count);
        Assert.Equal(0, pipe.PromptCacheMisses);
        // The next request gives the bytes a pipeline without warm-up gives.
        using var warm = pipe.Generate(LcmBasic);
        using var cold = fixture.Lcm.Generate(LcmBasic);
        Assert.Equal(0.0, Compare.MaxAbsDiff(cold.Images!, warm.Images!));
        Assert.Equal(1, pipe.PromptCacheMisses);
    }

    [Fact]
    public void PrecomputedEmbeddingsGiveTheSameImageAsThePrompt()
    {
        using var fromText = fixture.Lcm.Generate(LcmBasic);
        var (pos, _) = fixture.Lcm.EncodePrompt(LcmBasic.Prompts, false, cleanCaption: true);
        using (pos)
        using (var fromEmbeds = fixture.Lcm.Generate(LcmBasic with { Prompts = null, PromptEmbeds = pos }))
            Assert.Equal(0.0, Compare.MaxAbsDiff(fromText.Images!, fromEmbeds.Images!));
    }

    [Fact]
    public void LcmModelDefaultsToFourStepsWithoutGuidance()
    {
        // lcm_basic was called with steps 4 and guidance 0; leaving both out must give the same image.
        using var r = new Reference("expected/pipeline/lcm_basic");
        int calls = 0, total = 0;
        using var result = fixture.Lcm.Generate(LcmBasic with { NumInferenceSteps = null, GuidanceScale = null },
            s => { calls++; total = s.TotalSteps; return true; });
        Assert.Equal(4, calls);
        Assert.Equal(4, total);
        Compare.Close(r["images"], result.Images!, 1e-4, "lcm_basic with model defaults");
        Assert.Equal(4, fixture.Lcm.DefaultSteps);
        Assert.Equal(0.0, fixture.Lcm.DefaultGuidance);
        Assert.Equal(20, fixture.Dpm.DefaultSteps);
        Assert.Equal(4.5, fixture.Dpm.DefaultGuidance);
        Assert.Equal(1024, fixture.Lcm.DefaultHeight); // sample_size 128 × 8
        Assert.Equal(512, fixture.Dpm.DefaultWidth);   // sample_size 64 × 8
    }

    /// <summary>
    /// diffusers 0.29.2 crashes with num_inference_steps=1 (its 1-step branch reads .pred_original_sample, which
    /// neither scheduler returns). We return the scheduler's single step, which for LCM is its denoised estimate
    /// (no noise is injected on the last step) — what that branch meant. Pinned by composing the parts by hand.
    /// </summary>
    [Fact]
    public void OneLcmStepReturnsTheDenoisedEstimate()
    {
        var request = LcmBasic with { NumInferenceSteps = 1 };
        using var result = fixture.Lcm.Generate(request with { OutputType = OutputType.Latent });

        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var gen = new Generator(0);
        var latents = randn([1, 4, 8, 12], ScalarType.Float32, generator: gen);
        var (embeds, _) = fixture.Lcm.EncodePrompt(request.Prompts, false, cleanCaption: true);
        using var scheduler = LCMScheduler.FromConfig(Fixtures.Path("tiny-pixart-lcm", "scheduler", "scheduler_config.json"));
        scheduler.SetTimesteps(1);
        long t = scheduler.Timesteps[0];
        var eps = fixture.Lcm.LoadTransformer().forward(latents, embeds.Embeds, embeds.AttentionMask, tensor(new[] { t }),
            tensor(new float[] { 64, 96 }).reshape(1, 2), tensor(new float[] { 64f / 96f }).reshape(1, 1)).chunk(2, 1)[0];
        var (prev, denoised) = scheduler.Step(eps, t, latents, gen);
        Assert.Equal(0.0, Compare.MaxAbsDiff(denoised, prev));
        double err = Compare.Close(denoised, result.Latents, 1e-5, "1-step latents vs the denoised estimate");
        output.WriteLine($"1 step (t={t}): pipeline latents vs scheduler denoised max|Δ| {err:E3}");
    }

    [Fact]
    public void OneDpmStepEndsAtSigmaZero()
    {
        // DPM-Solver++ with final_sigmas_type "zero": the single first-order step lands on σ = 0, i.e. x0.
        using var result = fixture.Dpm.Generate(new GenerationRequest
        {
            Prompts = ["An astronaut riding a green horse"],
            NumInferenceSteps = 1,
            GuidanceScale = 4.5,
            Height = 64,
            Width = 64,
            UseResolutionBinning = false,
            Seed = 1,
        });
        Assert.Equal([1L, 64, 64, 3], result.Images!.shape);
        Assert.False(result.Latents.isnan().any().item<bool>());
    }

    [Fact]
    public void StepCallbackReportsEveryStepAndCanCancel()
    {
        var seen = new List<(int Step, int Total, long T)>();
        using (fixture.Lcm.Generate(LcmBasic, s => { seen.Add((s.Step, s.TotalSteps, s.Timestep)); return true; }))
        {
            Assert.Equal([1, 2, 3, 4], seen.Select(s => s.Step));
            Assert.All(seen, s => Assert.Equal(4, s.Total));
            Assert.Equal([999L, 759, 499, 259], seen.Select(s => s.T));
        }
        int calls = 0;
        Assert.Throws<OperationCanceledException>(() => fixture.Lcm.Generate(LcmBasic, _ => ++calls < 2));
        Assert.Equal(2, calls);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => fixture.Lcm.Generate(LcmBasic, null, cts.Token));
        // The pipeline still works after a cancelled call.
        using var again = fixture.Lcm.Generate(LcmBasic);
        Assert.Equal([1L, 64, 96, 3], again.Images!.shape);
    }

    [Fact]
    public void OneGeneratorPerPromptReproducesEachRequestAlone()
    {
        // Two independent requests (seed 0 and seed 5), batched with one generator each, with LCM (which also draws
        // noise inside every step): each half of the batch equals the request run alone.
        var a = LcmBasic;
        var b = LcmBasic with { Prompts = ["An astronaut riding a green horse"], Seed = 5 };
        using var aloneA = fixture.Lcm.Generate(a);
        using var aloneB = fixture.Lcm.Generate(b);
        using var batch = fixture.Lcm.Generate(a with
        {
            Prompts = [a.Prompts![0], b.Prompts![0]],
            Seed = null,
            Generators = [new Generator(0), new Generator(5)],
        });
        double ea = Compare.MaxAbsDiff(aloneA.Images!, batch.Images![0].unsqueeze(0));
        double eb = Compare.MaxAbsDiff(aloneB.Images!, batch.Images![1].unsqueeze(0));
        output.WriteLine($"batched vs alone: {ea:E3}, {eb:E3}");
        // Batched GEMMs may sum in another order than single ones; the images agree far inside 8-bit rounding.
        Assert.True(ea <= 1e-5 && eb <= 1e-5, $"batched vs alone differ by {ea:E3} / {eb:E3}");
    }

    [Theory]
    [InlineData("lcm_basic", 0.06)]
    [InlineData("dpm_cfg", 0.06)]
    public void Bf16StaysCloseToTheFp32Reference(string name, double bound)
    {
        using var r = new Reference("expected/pipeline/" + name);
        bool lcm = name.StartsWith("lcm", StringComparison.Ordinal);
        using var pipe = PixArtAlphaPipeline.FromPretrained(Fixtures.Path(lcm ? "tiny-pixart-lcm" : "tiny-pixart"),
            new PipelineOptions { DType = ScalarType.BFloat16 });
        var request = PipelineFixtureTests.RequestFromCall(r.Json.GetProperty("call"));
        using var result = pipe.Generate(request);
        double err = Compare.MaxAbsDiff(r["images"], result.Images!);
        using var mean = (r["images"] - result.Images!).abs().mean();
        output.WriteLine($"{name} bf16: images max|Δ| {err:E3}, mean|Δ| {mean.item<float>():E3} (bound {bound})");
        Assert.True(err <= bound, $"{name} bf16 images differ from fp32 diffusers by {err:E3} > {bound}");
    }

    public static IEnumerable<object[]> BadRequests()
    {
        var ok = LcmBasic;
        yield return [ok with { Height = 60 }, "Height", "divisible by 8"];
        yield return [ok with { Width = 100 }, "Width", "divisible by 8"];
        yield return [ok with { NumInferenceSteps = 0 }, "NumInferenceSteps", "at least 1"];
        yield return [ok with { GuidanceScale = -1 }, "GuidanceScale", "≥ 0"];
        yield return [ok with { NumImagesPerPrompt = 0 }, "NumImagesPerPrompt", "at least 1"];
        yield return [ok with { Prompts = null }, "Prompts", "either `prompt` or `prompt_embeds`"];
        yield return [ok with { Prompts = [] }, "Prompts", "empty"];
        yield return [ok with { NegativePrompts = ["a", "b"] }, "NegativePrompts", "one per prompt"];
        yield return [ok with { Timesteps = [999, 500], NumInferenceSteps = 4 }, "Timesteps", "give one of the two"];
        yield return [ok with { Scheduler = "euler" }, "Scheduler", "Unknown scheduler"];
        yield return [ok with { Scheduler = "sa-solver", Timesteps = [999, 500], NumInferenceSteps = null }, "Timesteps", "custom timestep"];
        yield return [ok with { Generators = [new Generator(1), new Generator(2)] }, "Generators", "one generator per prompt"];
    }

    [Theory]
    [MemberData(nameof(BadRequests))]
    public void BadInputsNameTheArgument(GenerationRequest request, string param, string message)
    {
        var e = Assert.ThrowsAny<ArgumentException>(() => fixture.Lcm.Generate(request));
        Assert.Equal(param, e.ParamName);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void EmbeddingChecksNameTheArgument()
    {
        var (pos, _) = fixture.Lcm.EncodePrompt(["a"], false);
        using (pos)
        {
            var both = Assert.Throws<ArgumentException>(() => fixture.Lcm.Generate(LcmBasic with { PromptEmbeds = pos }));
            Assert.Equal("PromptEmbeds", both.ParamName);
            using var badMask = new PromptEmbeddings(pos.Embeds.alias(), pos.AttentionMask[.., ..60]);
            var shape = Assert.Throws<ArgumentException>(() => fixture.Lcm.Generate(LcmBasic with { Prompts = null, PromptEmbeds = badMask }));
            Assert.Equal("prompt_embeds", shape.ParamName);
            using var negOther = new PromptEmbeddings(pos.Embeds[.., ..60], pos.AttentionMask[.., ..60]);
            var mismatch = Assert.Throws<ArgumentException>(() => fixture.Lcm.Generate(LcmBasic with
            {
                Prompts = null,
                PromptEmbeds = pos,
                NegativePromptEmbeds = negOther,
                GuidanceScale = 2,
            }));
            Assert.Equal("NegativePromptEmbeds", mismatch.ParamName);
        }
    }
}
