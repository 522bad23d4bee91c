using PixArtSharp.Pipeline;
using PixArtSharp.Tests.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Pipeline;

/// <summary>PipelineOptions.PromptCacheEntries: a repeated prompt skips T5 and gives the same bits as without the cache.</summary>
public sealed class PromptCacheTests(TinyPipelines pipes, ITestOutputHelper output) : IClassFixture<TinyPipelines>
{
    private static GenerationRequest Request(string prompt, string negative = "", double guidance = 4.5) => new()
    {
        Prompts = [prompt],
        NegativePrompts = [negative],
        NumInferenceSteps = 3,
        GuidanceScale = guidance,
        Height = 64,
        Width = 64,
        UseResolutionBinning = false,
        Seed = 11,
    };

    /// <summary>The same request twice with the cache on equals the run without it, bit for bit; the second call hits.</summary>
    [Fact]
    public void RepeatedRequestHitsAndGivesTheSameBits()
    {
        using var cached = PixArtPipeline.FromPretrained(Fixtures.Path("tiny-pixart"), new PipelineOptions { PromptCacheEntries = 8 });
        var request = Request("A small cactus with a happy face in the Sahara desert.", "blurry");
        using var plain = pipes.Dpm.Generate(request);
        Assert.Equal(0, pipes.Dpm.PromptCacheHits + pipes.Dpm.PromptCacheMisses);   // off by default

        using var first = cached.Generate(request);
        Assert.Equal((0L, 2L), (cached.PromptCacheHits, cached.PromptCacheMisses));   // prompt and negative prompt
        using var second = cached.Generate(request);
        Assert.Equal((2L, 2L), (cached.PromptCacheHits, cached.PromptCacheMisses));
        Assert.Equal(2, cached.PromptCache!.Count);

        foreach (var run in new[] { first, second })
        {
            Assert.Equal(0.0, Compare.MaxAbsDiff(plain.Latents, run.Latents));
            Assert.Equal(plain.ToRgb8()[0], run.ToRgb8()[0]);
        }
        output.WriteLine($"hits {cached.PromptCacheHits}, misses {cached.PromptCacheMisses}: latents and PNG pixels identical to the uncached run");
    }

    /// <summary>
    /// Keys are the preprocessed text + max length + clean flag; a batch mixing hits, misses and duplicates equals the
    /// uncached encode row for row; the least recently used entry goes first.
    /// </summary>
    [Fact]
    public void KeysBatchesAndEviction()
    {
        using var cached = PixArtPipeline.FromPretrained(Fixtures.Path("tiny-pixart"), new PipelineOptions { PromptCacheEntries = 2 });
        var (p0, _) = cached.EncodePrompt(["a red fox"], doClassifierFreeGuidance: false, cleanCaption: true);
        Assert.Equal((0L, 1L), (cached.PromptCacheHits, cached.PromptCacheMisses));
        // Preprocessing (clean_caption lowercases and strips) happens before the key: the same cleaned text hits.
        var (p1, _) = cached.EncodePrompt(["  A RED FOX  "], doClassifierFreeGuidance: false, cleanCaption: true);
        Assert.Equal((1L, 1L), (cached.PromptCacheHits, cached.PromptCacheMisses));
        Assert.Equal(0.0, Compare.MaxAbsDiff(p0.Embeds, p1.Embeds));
        // Another max length or clean flag is another entry.
        cached.EncodePrompt(["a red fox"], doClassifierFreeGuidance: false, cleanCaption: true, maxSequenceLength: 16).Positive.Dispose();
        Assert.Equal((1L, 2L), (cached.PromptCacheHits, cached.PromptCacheMisses));
        Assert.Equal(2, cached.PromptCache!.Count);

        // A batch with a hit ("a red fox", 120 tokens), a duplicated miss and another miss: T5 sees the two distinct
        // misses once; the result equals the uncached encode of the whole batch.
        string[] batch = ["a red fox", "a blue bird", "a blue bird", "a green frog"];
        var (mixed, _) = cached.EncodePrompt(batch, doClassifierFreeGuidance: false, cleanCaption: true);
        var (reference, _) = pipes.Dpm.EncodePrompt(batch, doClassifierFreeGuidance: false, cleanCaption: true);
        Assert.Equal(0.0, Compare.MaxAbsDiff(reference.Embeds, mixed.Embeds));
        Assert.Equal(0.0, Compare.MaxAbsDiff(reference.AttentionMask, mixed.AttentionMask));
        Assert.Equal((2L, 5L), (cached.PromptCacheHits, cached.PromptCacheMisses));
        Assert.Equal(2, cached.PromptCache.Count);          // bounded

        // The two most recent are "a blue bird" and "a green frog": "a red fox" was evicted.
        cached.EncodePrompt(["a green frog"], doClassifierFreeGuidance: false, cleanCaption: true).Positive.Dispose();
        Assert.Equal((3L, 5L), (cached.PromptCacheHits, cached.PromptCacheMisses));
        cached.EncodePrompt(["a red fox"], doClassifierFreeGuidance: false, cleanCaption: true).Positive.Dispose();
        Assert.Equal((3L, 6L), (cached.PromptCacheHits, cached.PromptCacheMisses));
        foreach (var t in new[] { p0, p1, mixed, reference }) t.Dispose();
    }

    [Fact]
    public void CapacityMustBePositive()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new PromptEmbeddingCache(0));
        Assert.Contains("0 turns it off", e.Message);
    }
}
