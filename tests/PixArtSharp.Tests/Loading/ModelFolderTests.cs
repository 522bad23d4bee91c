using System.Text.Json;
using PixArtSharp.Loading;
using PixArtSharp.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Loading;

public class ModelFolderTests
{
    private static void WriteTensors(string path, params (string Name, float Value)[] tensors)
    {
        var d = tensors.ToDictionary(t => t.Name, t => torch.full(new long[] { 2 }, t.Value));
        try { SafeTensorsWriter.Write(path, d); }
        finally { foreach (var t in d.Values) t.Dispose(); }
    }

    private static string Index(params (string Key, string File)[] map) =>
        JsonSerializer.Serialize(new { metadata = new { total_size = 8 * map.Length }, weight_map = map.ToDictionary(m => m.Key, m => m.File) });

    [Theory]
    [InlineData("tiny-pixart", "DPMSolverMultistepScheduler")]
    [InlineData("tiny-pixart-lcm", "LCMScheduler")]
    public void OpensTheFixtureFolders(string name, string scheduler)
    {
        var m = ModelFolder.Open(Fixtures.Path(name));
        Assert.Equal("PixArtAlphaPipeline", m.PipelineClass);
        Assert.Equal(("diffusers", "PixArtTransformer2DModel"), m.Components["transformer"]);
        Assert.Equal(("transformers", "T5EncoderModel"), m.Components["text_encoder"]);
        Assert.Equal(scheduler, m.ClassOf("scheduler"));
        Assert.Equal(5, m.Components.Count);
        Assert.Equal(new[] { Path.Combine(m.ComponentDir("transformer"), "diffusion_pytorch_model.safetensors") },
                     ModelFolder.FindWeightFiles(m.ComponentDir("transformer"), "diffusion_pytorch_model", null));
        Assert.Equal(new[] { Path.Combine(m.ComponentDir("text_encoder"), "model.safetensors") },
                     ModelFolder.FindWeightFiles(m.ComponentDir("text_encoder"), "model", null));
    }

    [Fact]
    public void OpensTheRealLcmConfigFolderWithItsOldTransformerClassName()
    {
        var m = ModelFolder.Open(Fixtures.Path("real-configs", "PixArt-LCM-XL-2-1024-MS"));
        Assert.Equal("PixArtAlphaPipeline", m.PipelineClass);
        Assert.Equal("Transformer2DModel", m.ClassOf("transformer"));
        Assert.Equal("LCMScheduler", m.ClassOf("scheduler"));
        Assert.Equal("AutoencoderKL", m.ClassOf("vae"));
        var e = Assert.Throws<ModelNotFoundException>(() => m.ClassOf("safety_checker"));
        Assert.Contains("model_index.json", e.Message);
    }

    [Theory]
    [InlineData("PixArt-LCM-XL-2-1024-MS", "model-00001-of-00004.safetensors")]
    [InlineData("PixArt-XL-2-1024-MS", "model-00001-of-00002.safetensors")]
    public void RealTextEncoderIndexWithoutShardsNamesTheMissingShard(string repo, string firstShard)
    {
        string dir = Fixtures.Path("real-configs", repo, "text_encoder");
        var e = Assert.Throws<ModelNotFoundException>(() => ModelFolder.FindWeightFiles(dir, "model", null));
        Assert.Contains(Path.Combine(dir, firstShard), e.Message);
        Assert.Contains("model.safetensors.index.json", e.Message);
        // The weight map itself reads: T5-XXL's encoder keys, in shards named in the same folder.
        var map = ModelFolder.WeightMapOf(Path.Combine(dir, "model.safetensors.index.json"));
        Assert.Contains("encoder.block.0.layer.0.SelfAttention.q.weight", map.Keys);
        Assert.All(map.Values, p => Assert.Equal(dir, Path.GetDirectoryName(p)));
    }

    [Fact]
    public void MissingFolderAndMissingModelIndexAreClear()
    {
        using var dir = new TempDir();
        var e1 = Assert.Throws<ModelNotFoundException>(() => ModelFolder.Open(dir.Path("absent")));
        Assert.Contains(dir.Path("absent"), e1.Message);
        var e2 = Assert.Throws<ModelNotFoundException>(() => ModelFolder.Open(dir.Root));
        Assert.Contains("model_index.json", e2.Message);
        dir.WriteText("model_index.json", """{"_class_name": "PixArtAlphaPipeline", "vae": ["diffusers", "AutoencoderKL"],""");
        var e3 = Assert.Throws<WeightFileException>(() => ModelFolder.Open(dir.Root));
        Assert.Contains(dir.Path("model_index.json"), e3.Message);
        dir.WriteText("model_index.json", "[1, 2]");
        Assert.Throws<WeightFileException>(() => ModelFolder.Open(dir.Root));
    }

    [Fact]
    public void ModelIndexToleratesOddEntriesAndReportsMissingComponentFolders()
    {
        using var dir = new TempDir();
        dir.WriteText("model_index.json", """
            {"_class_name": 3, "_diffusers_version": "0.29.2", "safety_checker": [null, null], "weird": [1, 2],
             "vae": ["diffusers", "AutoencoderKL"], "extra": {"a": 1}, "scheduler": ["diffusers", "LCMScheduler", "x"]}
            """);
        var m = ModelFolder.Open(dir.Root);
        Assert.Equal("", m.PipelineClass);
        Assert.Equal(new[] { "vae" }, m.Components.Keys);
        var e = Assert.Throws<ModelNotFoundException>(() => m.ComponentDir("vae"));
        Assert.Contains("'vae'", e.Message);
    }

    [Fact]
    public void ShardedVariantCheckpointLoadsFromAllShards()
    {
        using var dir = new TempDir();
        WriteTensors(dir.Path("model.fp16-00001-of-00002.safetensors"), ("a.weight", 1), ("b.weight", 2));
        WriteTensors(dir.Path("model.fp16-00002-of-00002.safetensors"), ("c.weight", 3));
        dir.WriteText("model.safetensors.index.fp16.json", Index(("a.weight", "model.fp16-00001-of-00002.safetensors"),
            ("c.weight", "model.fp16-00002-of-00002.safetensors"), ("b.weight", "model.fp16-00001-of-00002.safetensors")));
        Assert.Equal(new[] { dir.Path("model.fp16-00001-of-00002.safetensors"), dir.Path("model.fp16-00002-of-00002.safetensors") },
                     ModelFolder.FindWeightFiles(dir.Root, "model", "fp16"));
        using var w = ModelFolder.OpenWeights(dir.Root, "model", "fp16", ScalarType.Float32);
        Assert.Contains("2 shards", w.Description);
        foreach (var (k, v) in new[] { ("a.weight", 1f), ("b.weight", 2f), ("c.weight", 3f) })
            using (var t = w.Get(k, 2)) Assert.Equal(new[] { v, v }, t.data<float>().ToArray());
        w.CheckAllUsed();
        // Without the variant, there is nothing: the error says which variant-looking files are there.
        var e = Assert.Throws<ModelNotFoundException>(() => ModelFolder.FindWeightFiles(dir.Root, "model", null));
        Assert.Contains("--variant", e.Message);
        Assert.Contains("model.safetensors.index.json", e.Message);
    }

    [Fact]
    public void SingleVariantFileIsFoundAndPreferredOverAnIndex()
    {
        using var dir = new TempDir();
        WriteTensors(dir.Path("diffusion_pytorch_model.fp16.safetensors"), ("x", 1));
        WriteTensors(dir.Path("diffusion_pytorch_model.safetensors"), ("x", 2));
        Assert.Equal(new[] { dir.Path("diffusion_pytorch_model.fp16.safetensors") }, ModelFolder.FindWeightFiles(dir.Root, "diffusion_pytorch_model", "fp16"));
        Assert.Equal(new[] { dir.Path("diffusion_pytorch_model.safetensors") }, ModelFolder.FindWeightFiles(dir.Root, "diffusion_pytorch_model", null));
        using var w = ModelFolder.OpenWeights(dir.Root, "diffusion_pytorch_model", "fp16", ScalarType.Float32);
        using var x = w.Get("x", 2);
        Assert.Equal(1f, x[0].item<float>());
    }

    [Fact]
    public void MissingVariantFallsBackToTheDefaultWeights()
    {
        // diffusers loads a component's default weights when the requested variant is not there.
        using var dir = new TempDir();
        WriteTensors(dir.Path("diffusion_pytorch_model.safetensors"), ("x", 1));
        Assert.Equal(new[] { dir.Path("diffusion_pytorch_model.safetensors") }, ModelFolder.FindWeightFiles(dir.Root, "diffusion_pytorch_model", "fp16"));
        Assert.False(ModelFolder.HasWeights(dir.Root, "diffusion_pytorch_model", "fp16"));
        Assert.True(ModelFolder.HasWeights(dir.Root, "diffusion_pytorch_model", null));
        using var w = ModelFolder.OpenWeights(dir.Root, "diffusion_pytorch_model", "fp16", ScalarType.Float32);
        using var x = w.Get("x", 2);
        Assert.Equal(1f, x[0].item<float>());
    }

    [Fact]
    public void MissingVariantAndDefaultIsAClearError()
    {
        using var dir = new TempDir();
        WriteTensors(dir.Path("diffusion_pytorch_model.bf16.safetensors"), ("x", 1));
        var e = Assert.Throws<ModelNotFoundException>(() => ModelFolder.FindWeightFiles(dir.Root, "diffusion_pytorch_model", "fp16"));
        Assert.Contains("'fp16' or default", e.Message);
        Assert.Contains("diffusion_pytorch_model.fp16.safetensors", e.Message);
        Assert.Contains("diffusion_pytorch_model.safetensors.index.fp16.json", e.Message);
        Assert.Contains("diffusion_pytorch_model.bf16.safetensors", e.Message);
        Assert.Contains(dir.Root, e.Message);
    }

    [Fact]
    public void BinOnlyAndEmptyFoldersAreClearErrors()
    {
        using var dir = new TempDir();
        var empty = Assert.Throws<ModelNotFoundException>(() => ModelFolder.FindWeightFiles(dir.Root, "diffusion_pytorch_model", null));
        Assert.Contains("no weights", empty.Message);
        dir.Write("diffusion_pytorch_model.bin", new byte[16]);
        var e = Assert.Throws<ModelNotFoundException>(() => ModelFolder.FindWeightFiles(dir.Root, "diffusion_pytorch_model", null));
        Assert.Contains("diffusion_pytorch_model.bin", e.Message);
        Assert.Contains("safetensors only", e.Message);
    }

    [Fact]
    public void MissingShardIsNamed()
    {
        using var dir = new TempDir();
        WriteTensors(dir.Path("model-00001-of-00002.safetensors"), ("a", 1));
        dir.WriteText("model.safetensors.index.json", Index(("a", "model-00001-of-00002.safetensors"), ("b", "model-00002-of-00002.safetensors")));
        var e = Assert.Throws<ModelNotFoundException>(() => ModelFolder.FindWeightFiles(dir.Root, "model", null));
        Assert.Contains(dir.Path("model-00002-of-00002.safetensors"), e.Message);
        Assert.Contains("incomplete", e.Message);
    }

    [Theory]
    [InlineData("../model-00001-of-00001.safetensors")]
    [InlineData("/etc/model-00001-of-00001.safetensors")]
    [InlineData("sub/model-00001-of-00001.safetensors")]
    [InlineData("..")]
    [InlineData("")]
    [InlineData("model_index.json")]
    public void IndexPointingOutsideTheFolderIsRefused(string target)
    {
        using var dir = new TempDir();
        dir.WriteText("model.safetensors.index.json", Index(("encoder.weight", target)));
        var e = Assert.Throws<WeightFileException>(() => ModelFolder.FindWeightFiles(dir.Root, "model", null));
        Assert.Contains("'encoder.weight'", e.Message);
        Assert.Contains(dir.Path("model.safetensors.index.json"), e.Message);
    }

    [Theory]
    [InlineData("""{"weight_map": {"a": 5}}""", "'a'")]
    [InlineData("""{"weight_map": []}""", "weight_map")]
    [InlineData("""{"metadata": {}}""", "weight_map")]
    [InlineData("""{"weight_map": {}}""", "empty weight_map")]
    [InlineData("""{"weight_map": {"a": "x.safetensors", "a": "x.safetensors"}}""", "appears twice")]
    [InlineData("""{"weight_map": {""", "not valid JSON")]
    [InlineData("""[]""", "weight_map")]
    public void MalformedIndexIsAClearError(string json, string phrase)
    {
        using var dir = new TempDir();
        string index = dir.WriteText("model.safetensors.index.json", json);
        var e = Assert.Throws<WeightFileException>(() => ModelFolder.FindWeightFiles(dir.Root, "model", null));
        Assert.Contains(index, e.Message);
        Assert.Contains(phrase, e.Message);
    }

    [Fact]
    public void ShardsMustAgreeWithTheirIndex()
    {
        using var dir = new TempDir();
        WriteTensors(dir.Path("m-1.safetensors"), ("a", 1), ("b", 2));
        WriteTensors(dir.Path("m-2.safetensors"), ("c", 3));
        string index = dir.Path("model.safetensors.index.json");

        // A key the index places in the wrong shard.
        dir.WriteText("model.safetensors.index.json", Index(("a", "m-1.safetensors"), ("b", "m-2.safetensors"), ("c", "m-2.safetensors")));
        var e1 = Assert.Throws<WeightFileException>(() => ModelFolder.OpenWeights(dir.Root, "model", null, ScalarType.Float32));
        Assert.Contains("'b'", e1.Message);
        Assert.Contains(index, e1.Message);
        // A key the index lists but no shard holds.
        dir.WriteText("model.safetensors.index.json", Index(("a", "m-1.safetensors"), ("b", "m-1.safetensors"), ("c", "m-2.safetensors"), ("d", "m-2.safetensors")));
        var e2 = Assert.Throws<WeightFileException>(() => ModelFolder.OpenWeights(dir.Root, "model", null, ScalarType.Float32));
        Assert.Contains("'d'", e2.Message);
        // A key a shard holds that the index does not list.
        dir.WriteText("model.safetensors.index.json", Index(("a", "m-1.safetensors"), ("c", "m-2.safetensors")));
        var e3 = Assert.Throws<WeightFileException>(() => ModelFolder.OpenWeights(dir.Root, "model", null, ScalarType.Float32));
        Assert.Contains("'b'", e3.Message);
        Assert.Contains(dir.Path("m-1.safetensors"), e3.Message);
    }

    [Fact]
    public void CorruptShardNamesTheShardAndTensor()
    {
        using var dir = new TempDir();
        WriteTensors(dir.Path("m-1.safetensors"), ("a", 1));
        dir.Write("m-2.safetensors", SafeTensorsValidationTests.Craft("""{"c.w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}""", new byte[8]));
        dir.WriteText("model.safetensors.index.json", Index(("a", "m-1.safetensors"), ("c.w", "m-2.safetensors")));
        var e = Assert.Throws<WeightFileException>(() => ModelFolder.OpenWeights(dir.Root, "model", null, ScalarType.Float32));
        Assert.Contains(dir.Path("m-2.safetensors"), e.Message);
        Assert.Contains("'c.w'", e.Message);
    }
}

public class ConfigJsonTests
{
    public sealed class SchedulerConfig
    {
        public int NumTrainTimesteps { get; set; } = 1000;
        public double BetaStart { get; set; } = 0.0001;
        public string BetaSchedule { get; set; } = "linear";
        public double LambdaMinClipped { get; set; } = double.NegativeInfinity;
        public double? Threshold { get; set; }
        public float Ratio { get; set; } = 1f;
        public string FinalSigmasType { get; set; } = "zero";
        public double TimestepScaling { get; set; } = 10.0;
        public string? VarianceType { get; set; }
        public int[]? Sizes { get; set; }
    }

    [Fact]
    public void BareNonFiniteLiteralsParseAndUnknownKeysAreIgnored()
    {
        const string json = """
            {"_class_name": "X", "num_train_timesteps": 500, "lambda_min_clipped": -Infinity, "threshold": NaN,
             "ratio": Infinity, "beta_schedule": "NaN -Infinity \"Infinity\" \\", "unknown_key": {"nested": [NaN, 1]},
             "variance_type": null, "sizes": [1, 2]}
            """;
        // System.Text.Json alone refuses the bare literals Python writes (the named-literal option only covers strings).
        Assert.ThrowsAny<JsonException>(() => JsonSerializer.Deserialize<SchedulerConfig>(json, ConfigJson.Options));
        var c = ConfigJson.Parse<SchedulerConfig>(json);
        Assert.Equal(500, c.NumTrainTimesteps);
        Assert.Equal(double.NegativeInfinity, c.LambdaMinClipped);
        Assert.True(double.IsNaN(c.Threshold!.Value));
        Assert.Equal(float.PositiveInfinity, c.Ratio);
        Assert.Equal("NaN -Infinity \"Infinity\" \\", c.BetaSchedule); // strings untouched
        Assert.Null(c.VarianceType);
        Assert.Equal(new[] { 1, 2 }, c.Sizes);
        // Missing keys keep the defaults (diffusers' defaults).
        Assert.Equal(0.0001, c.BetaStart);
        Assert.Equal("zero", c.FinalSigmasType);
        Assert.Equal(10.0, c.TimestepScaling);
    }

    [Theory]
    [InlineData("tiny-pixart", "scheduler", "scheduler_config.json")]
    [InlineData("real-configs", "PixArt-XL-2-1024-MS/scheduler", "scheduler_config.json")]
    [InlineData("real-configs", "PixArt-XL-2-512x512/scheduler", "scheduler_config.json")]
    public void FixtureSchedulerConfigsWithMinusInfinityLoad(string root, string sub, string file)
    {
        var c = ConfigJson.Load<SchedulerConfig>(Fixtures.Path([root, .. sub.Split('/'), file]));
        Assert.Equal(double.NegativeInfinity, c.LambdaMinClipped);
        Assert.Equal(1000, c.NumTrainTimesteps);
        Assert.Equal(0.0001, c.BetaStart);
    }

    [Fact]
    public void RealLcmSchedulerConfigLacksTimestepScalingSoTheDefaultApplies()
    {
        string path = Fixtures.Path("real-configs", "PixArt-LCM-XL-2-1024-MS", "scheduler", "scheduler_config.json");
        Assert.DoesNotContain("timestep_scaling", File.ReadAllText(path));
        Assert.Equal(10.0, ConfigJson.Load<SchedulerConfig>(path).TimestepScaling);
    }

    [Theory]
    [InlineData("{\"num_train_timesteps\": NaNa}")]
    [InlineData("{\"num_train_timesteps\": \"many\"}")]
    [InlineData("{\"num_train_timesteps\": 1,")]
    [InlineData("")]
    public void MalformedConfigNamesTheFile(string text)
    {
        using var dir = new TempDir();
        string path = dir.WriteText("config.json", text);
        var e = Assert.Throws<ModelConfigException>(() => ConfigJson.Load<SchedulerConfig>(path));
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void NullConfigAndMissingFileAreClear()
    {
        using var dir = new TempDir();
        Assert.Throws<WeightFileException>(() => ConfigJson.Load<SchedulerConfig>(dir.WriteText("config.json", "null")));
        var e = Assert.Throws<ModelNotFoundException>(() => ConfigJson.Load<SchedulerConfig>(dir.Path("absent.json")));
        Assert.Contains(dir.Path("absent.json"), e.Message);
    }

    [Fact]
    public void QuotingLeavesOrdinaryJsonUnchanged()
    {
        const string json = """{"a": "NaN", "b": [1.5, -2e3, true, null], "c": "Infinity\\"}""";
        Assert.Equal(json, ConfigJson.QuoteNonFiniteLiterals(json));
        Assert.Equal("""[-1, "-Infinity", "NaN"]""", ConfigJson.QuoteNonFiniteLiterals("[-1, -Infinity, NaN]"));
    }
}
