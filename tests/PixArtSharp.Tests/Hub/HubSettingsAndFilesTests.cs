using PixArtSharp.Hub;

namespace PixArtSharp.Tests.Hub;

public sealed class HubSettingsTests : IDisposable
{
    private readonly TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private static HubSettings From(Dictionary<string, string> env, string home = "/home/u") =>
        HubSettings.FromEnvironment(k => env.TryGetValue(k, out var v) ? v : null, home);

    [Fact]
    public void CacheFollowsHuggingfaceHubPrecedence()
    {
        Assert.Equal("/home/u/.cache/huggingface/hub", From([]).CacheDir);
        Assert.Equal("/x/huggingface/hub", From(new() { ["XDG_CACHE_HOME"] = "/x" }).CacheDir);
        Assert.Equal("/hf/hub", From(new() { ["HF_HOME"] = "/hf", ["XDG_CACHE_HOME"] = "/x" }).CacheDir);
        Assert.Equal("/home/u/hf/hub", From(new() { ["HF_HOME"] = "~/hf" }).CacheDir);
        Assert.Equal("/legacy", From(new() { ["HF_HOME"] = "/hf", ["HUGGINGFACE_HUB_CACHE"] = "/legacy" }).CacheDir);
        Assert.Equal("/new", From(new() { ["HF_HOME"] = "/hf", ["HUGGINGFACE_HUB_CACHE"] = "/legacy", ["HF_HUB_CACHE"] = "/new" }).CacheDir);
        Assert.Equal("/hf/hub", From(new() { ["HF_HOME"] = "/hf", ["HF_HUB_CACHE"] = "" }).CacheDir);  // empty = unset
    }

    [Fact]
    public void EndpointOfflineAndTimeouts()
    {
        Assert.Equal("https://huggingface.co", From([]).Endpoint);
        Assert.Equal("https://hf-mirror.example", From(new() { ["HF_ENDPOINT"] = "https://hf-mirror.example/" }).Endpoint);
        Assert.False(From([]).Offline);
        foreach (var v in new[] { "1", "ON", "yes", "True" }) Assert.True(From(new() { ["HF_HUB_OFFLINE"] = v }).Offline, v);
        foreach (var v in new[] { "0", "false", "no", "" }) Assert.False(From(new() { ["HF_HUB_OFFLINE"] = v }).Offline, v);
        Assert.Equal(TimeSpan.FromSeconds(10), From([]).RequestTimeout);
        Assert.Equal(TimeSpan.FromSeconds(2.5), From(new() { ["HF_HUB_ETAG_TIMEOUT"] = "2.5" }).RequestTimeout);
    }

    [Fact]
    public void TokenFromVariableThenLegacyThenLoginFile()
    {
        string home = _tmp.Sub("hf");
        Directory.CreateDirectory(home);
        Assert.Null(From(new() { ["HF_HOME"] = home }).Token);
        File.WriteAllText(Path.Combine(home, "token"), "hf_fromfile\n");
        Assert.Equal("hf_fromfile", From(new() { ["HF_HOME"] = home }).Token);
        Assert.Equal("hf_legacy", From(new() { ["HF_HOME"] = home, ["HUGGING_FACE_HUB_TOKEN"] = "hf_legacy" }).Token);
        Assert.Equal("hf_env", From(new() { ["HF_HOME"] = home, ["HUGGING_FACE_HUB_TOKEN"] = "hf_legacy", ["HF_TOKEN"] = "hf_env" }).Token);
        string other = _tmp.Sub("tok");
        File.WriteAllText(other, "hf_path");
        Assert.Equal("hf_path", From(new() { ["HF_HOME"] = home, ["HF_TOKEN_PATH"] = other }).Token);
    }

    [Fact]
    public void ProcessEnvironmentGivesAnAbsoluteCache()
    {
        var s = HubSettings.FromEnvironment();
        Assert.True(Path.IsPathRooted(s.CacheDir), s.CacheDir);
        Assert.StartsWith("http", s.Endpoint);
    }
}

public sealed class PipelineFilesTests
{
    private static readonly string[] Components = ["scheduler", "text_encoder", "tokenizer", "transformer", "vae"];

    private static HashSet<string> Repo(params string[] extra) =>
    [
        "model_index.json", "README.md", "asset/logo.png",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
        "text_encoder/pytorch_model.bin.index.json", "text_encoder/pytorch_model-00001-of-00002.bin",
        "tokenizer/spiece.model", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "tokenizer/added_tokens.json",
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.bin",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
        .. extra,
    ];

    [Fact]
    public void SelectsConfigsTokenizerAndDefaultWeightsOnly()
    {
        var files = PipelineFiles.Select(Repo(), Components, null, "o/r");
        Assert.Equal(new[]
        {
            "scheduler/scheduler_config.json",
            "text_encoder/config.json", "text_encoder/model.safetensors.index.json",
            "tokenizer/spiece.model", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "tokenizer/added_tokens.json",
            "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
            "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        }, files);
    }

    [Fact]
    public void VariantPicksVariantFilesAndFallsBackPerComponent()
    {
        var files = PipelineFiles.Select(Repo("text_encoder/model.safetensors.index.fp16.json"), Components, "fp16", "o/r");
        Assert.Contains("vae/diffusion_pytorch_model.fp16.safetensors", files);
        Assert.DoesNotContain("vae/diffusion_pytorch_model.safetensors", files);
        Assert.Contains("text_encoder/model.safetensors.index.fp16.json", files);
        Assert.DoesNotContain("text_encoder/model.safetensors.index.json", files);
        Assert.Contains("transformer/diffusion_pytorch_model.safetensors", files);  // no fp16 there: default
        Assert.True(PipelineFiles.IsShardIndex("text_encoder/model.safetensors.index.fp16.json"));
        Assert.False(PipelineFiles.IsShardIndex("text_encoder/config.json"));
    }

    [Fact]
    public void ShardsComeFromTheWeightMap()
    {
        var shards = PipelineFiles.ShardsOf("text_encoder/model.safetensors.index.json",
            """{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}"""u8, "o/r");
        Assert.Equal(["text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors"], shards);
        var e = Assert.Throws<HubDownloadException>(() => PipelineFiles.ShardsOf("x/i.json", """{"weight_map": {"a": "../../etc/passwd"}}"""u8, "o/r"));
        Assert.Equal(HubErrorKind.Unsupported, e.Kind);
    }

    [Fact]
    public void BinOnlyOrMissingComponentsAreClearErrors()
    {
        var bin = new HashSet<string> { "model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.bin" };
        var e = Assert.Throws<HubDownloadException>(() => PipelineFiles.Select(bin, ["vae"], null, "o/r"));
        Assert.Equal(HubErrorKind.Unsupported, e.Kind);
        Assert.Contains("safetensors only", e.Message);
        e = Assert.Throws<HubDownloadException>(() => PipelineFiles.Select(bin, ["vae", "transformer"], null, "o/r"));
        e = Assert.Throws<HubDownloadException>(() => PipelineFiles.Select(Repo(), ["unet"], null, "o/r"));
        Assert.Contains("no 'unet/' folder", e.Message);
    }

    [Fact]
    public void ComponentsSkipNullsAndPrivateKeys()
    {
        var names = PipelineFiles.Components("""{"_class_name": "PixArtAlphaPipeline", "_diffusers_version": "0.29.2", "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [null, null], "tokenizer": ["transformers", "T5Tokenizer"]}"""u8, "o/r");
        Assert.Equal(["vae", "tokenizer"], names);
        Assert.Throws<HubDownloadException>(() => PipelineFiles.Components("""{"../x": ["a", "b"]}"""u8, "o/r"));
        Assert.Throws<HubDownloadException>(() => PipelineFiles.Components("not json"u8, "o/r"));
    }

    [Fact]
    public void RepoIdsAreValidatedLikeHuggingfaceHub()
    {
        Assert.True(HubClient.IsValidRepoId("PixArt-alpha/PixArt-LCM-XL-2-1024-MS"));
        Assert.True(HubClient.IsValidRepoId("gpt2"));
        foreach (var bad in new[] { "", "a/b/c", "a--b/c", "a/../b", "-a/b", "a/b.", "a b/c", "/a" })
            Assert.False(HubClient.IsValidRepoId(bad), bad);
        Assert.Equal("models--PixArt-alpha--PixArt-LCM-XL-2-1024-MS", HubCache.RepoFolderName("PixArt-alpha/PixArt-LCM-XL-2-1024-MS"));
    }
}
