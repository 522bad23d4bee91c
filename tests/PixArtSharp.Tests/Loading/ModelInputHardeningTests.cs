using System.Text.Json.Nodes;
using PixArtSharp.Hub;
using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Schedulers;
using PixArtSharp.Tests.Support;
using PixArtSharp.Text;

namespace PixArtSharp.Tests.Loading;

/// <summary>
/// Broken model folders are refused before work starts, with the file and key named and an exception type the
/// front ends map to "broken model" (<see cref="WeightFileException"/> and its subclasses) or "not there"
/// (<see cref="ModelNotFoundException"/>) — never a late failure, an allocation of billions, or .NET's message alone.
/// </summary>
public class ModelInputHardeningTests
{
    /// <summary>A fixture config with one key changed (raw JSON text, so NaN and huge numbers can be written).</summary>
    private static string Edited(TempDir dir, string fixtureFile, string key, string rawValue)
    {
        var node = JsonNode.Parse(ConfigJson.QuoteNonFiniteLiterals(File.ReadAllText(Fixtures.Path(fixtureFile))))!.AsObject();
        node[key] = "@@VALUE@@";
        string text = node.ToJsonString().Replace("\"@@VALUE@@\"", rawValue);
        return dir.WriteText(Path.GetFileName(fixtureFile), text);
    }

    private static ModelConfigException Refused(Action load, string path, string key)
    {
        var e = Assert.Throws<ModelConfigException>(load);
        Assert.Contains(path, e.Message);
        Assert.Equal(path, e.File);
        Assert.Equal(key, e.Key);
        Assert.Contains(key, e.Message);
        return e;
    }

    private const string DpmScheduler = "tiny-pixart/scheduler/scheduler_config.json";
    private const string LcmScheduler = "tiny-pixart-lcm/scheduler/scheduler_config.json";

    [Theory]
    [InlineData("num_train_timesteps", "2000000000")]
    [InlineData("num_train_timesteps", "0")]
    [InlineData("trained_betas", "[0.1, 0.2, 0.3]")]
    [InlineData("beta_start", "5")]
    [InlineData("beta_start", "-0.001")]
    [InlineData("beta_end", "1.5")]
    [InlineData("beta_start", "0.5")]   // larger than the file's beta_end 0.02
    [InlineData("steps_offset", "5000")]
    [InlineData("solver_order", "99")]
    public void SchedulerConfigsOutOfRangeNameTheFileAndKey(string key, string value)
    {
        using var dir = new TempDir();
        string path = Edited(dir, DpmScheduler, key, value);
        Refused(() => SchedulerConfig.Load(path), path, key);
        Refused(() => DPMSolverMultistepScheduler.FromConfig(path), path, key);
        Refused(() => SASolverScheduler.FromConfigFile(path), path, key);
    }

    [Fact]
    public void BillionsOfTrainTimestepsAreRefusedBeforeAllocating()
    {
        using var dir = new TempDir();
        string path = Edited(dir, LcmScheduler, "num_train_timesteps", "2147483647");
        long before = GC.GetAllocatedBytesForCurrentThread();
        Refused(() => LCMScheduler.FromConfig(path), path, "num_train_timesteps");
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 10_000_000, "the schedule must not be allocated");
        Assert.Throws<ArgumentException>(() => NoiseSchedule.Betas("linear", 0.0001, 0.02, 2_000_000_000, null));
    }

    [Fact]
    public void TrainedBetasOfTheRightLengthStillLoad()
    {
        using var dir = new TempDir();
        var betas = string.Join(", ", Enumerable.Range(0, 1000).Select(i => (0.0001 + i * 0.00002).ToString("R", System.Globalization.CultureInfo.InvariantCulture)));
        string path = Edited(dir, DpmScheduler, "trained_betas", $"[{betas}]");
        using var s = DPMSolverMultistepScheduler.FromConfig(path);
        Assert.Equal(1000, s.Timesteps.Length);
    }

    /// <summary>A beta_start above the scheduler's own default beta_end (the file gives no beta_end).</summary>
    [Fact]
    public void AScheduleThatShrinksIsRefusedNamingTheFile()
    {
        using var dir = new TempDir();
        var node = JsonNode.Parse(File.ReadAllText(Fixtures.Path(LcmScheduler)))!.AsObject();
        node.Remove("beta_end");
        node["beta_start"] = 0.5;
        string path = dir.WriteText("scheduler_config.json", node.ToJsonString());
        var e = Assert.Throws<ModelConfigException>(() => LCMScheduler.FromConfig(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("beta_start", e.Message);
    }

    [Fact]
    public void UnsupportedSchedulerOptionsFromAFileNameTheFile()
    {
        using var dir = new TempDir();
        string path = Edited(dir, DpmScheduler, "use_karras_sigmas", "true");
        var e = Assert.Throws<ModelConfigException>(() => DPMSolverMultistepScheduler.FromConfig(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("use_karras_sigmas", e.Message);
        Assert.DoesNotContain("(Parameter", e.Message);
    }

    private const string Transformer = "tiny-pixart/transformer/config.json";

    [Theory]
    [InlineData("sample_size", "2147483647")]
    [InlineData("patch_size", "100")]
    [InlineData("num_attention_heads", "1000000")]
    [InlineData("attention_head_dim", "100000")]
    [InlineData("num_layers", "100000")]
    [InlineData("in_channels", "1000000")]
    [InlineData("caption_channels", "2000000000")]
    public void TransformerConfigsOutOfRangeNameTheFileAndKey(string key, string value)
    {
        using var dir = new TempDir();
        string path = Edited(dir, Transformer, key, value);
        Refused(() => PixArtTransformerConfig.Load(path), path, key);
    }

    [Fact]
    public void AnOverflowingSampleSizeIsAConfigErrorNotAnOverflow()
    {
        using var dir = new TempDir();
        string path = Edited(dir, Transformer, "sample_size", "99999999999999");
        var e = Assert.Throws<ModelConfigException>(() => PixArtTransformerConfig.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Equal("sample_size", e.Key);
    }

    [Fact]
    public void AnUnsupportedClassIsABrokenModelNamingTheFile()
    {
        using var dir = new TempDir();
        string t = Edited(dir, Transformer, "_class_name", "\"UNet2DConditionModel\"");
        Refused(() => PixArtTransformerConfig.Load(t), t, "_class_name");
        using var dir2 = new TempDir();
        string v = Edited(dir2, "tiny-pixart/vae/config.json", "_class_name", "\"AutoencoderTiny\"");
        Refused(() => AutoencoderKLConfig.Load(v), v, "_class_name");
        using var dir3 = new TempDir();
        string te = Edited(dir3, "tiny-pixart/text_encoder/config.json", "model_type", "\"bert\"");
        Refused(() => T5Config.Load(te), te, "model_type");
    }

    [Theory]
    [InlineData("block_out_channels", "[32, 64, 999999]")]
    [InlineData("block_out_channels", "[32, 32, 32, 32, 32, 32, 32, 32, 32, 32]")]
    [InlineData("scaling_factor", "NaN")]
    [InlineData("scaling_factor", "Infinity")]
    [InlineData("shift_factor", "NaN")]
    [InlineData("layers_per_block", "1000")]
    public void VaeConfigsOutOfRangeNameTheFileAndKey(string key, string value)
    {
        using var dir = new TempDir();
        string path = Edited(dir, "tiny-pixart/vae/config.json", key, value);
        Refused(() => AutoencoderKLConfig.Load(path), path, key);
    }

    [Theory]
    [InlineData("d_model", "1000000000")]
    [InlineData("num_heads", "100000")]
    [InlineData("vocab_size", "2000000000")]
    [InlineData("num_layers", "100000")]
    [InlineData("d_ff", "1000000000")]
    public void T5ConfigsOutOfRangeNameTheFileAndKey(string key, string value)
    {
        using var dir = new TempDir();
        string path = Edited(dir, "tiny-pixart/text_encoder/config.json", key, value);
        Refused(() => T5Config.Load(path), path, key);
    }

    [Fact]
    public void TokenizerErrorsNameTheFile()
    {
        using var dir = new TempDir();
        string missing = dir.Path("spiece.model");
        var nf = Assert.Throws<ModelNotFoundException>(() => T5Tokenizer.FromModelFolder(dir.Root));
        Assert.Contains(missing, nf.Message);

        string corrupt = dir.Write("spiece.model", System.Text.Encoding.ASCII.GetBytes("this is not a sentencepiece model"));
        var bad = Assert.Throws<WeightFileException>(() => T5Tokenizer.FromModelFolder(dir.Root));
        Assert.Contains(corrupt, bad.Message);
        Assert.Contains("SentencePiece", bad.Message);

        // A truncated real model.
        var real = File.ReadAllBytes(Fixtures.Path("tiny-pixart", "tokenizer", "spiece.model"));
        dir.Write("spiece.model", real[..(real.Length / 3)]);
        var cut = Assert.ThrowsAny<WeightFileException>(() => T5Tokenizer.FromModelFolder(dir.Root));
        Assert.Contains(corrupt, cut.Message);
    }

    [Fact]
    public void ASymlinkLoopNamesThePath()
    {
        using var dir = new TempDir();
        string a = dir.Path("config.json"), b = dir.Path("other.json");
        File.CreateSymbolicLink(a, b);
        File.CreateSymbolicLink(b, a);
        Assert.Equal(FileKind.SymlinkLoop, FileKinds.Of(a));
        var e = Assert.Throws<WeightFileException>(() => PixArtTransformerConfig.Load(a));
        Assert.Contains(a, e.Message);
        Assert.Contains("symbolic link", e.Message);
        var s = Assert.Throws<WeightFileException>(() => SafeTensorsFile.Open(a));
        Assert.Contains(a, s.Message);
        var tok = Assert.Throws<WeightFileException>(() => new T5Tokenizer(a));
        Assert.Contains(a, tok.Message);
    }

    [Fact]
    public void ADanglingLinkIsAMissingFileNamingTheTarget()
    {
        using var dir = new TempDir();
        string a = dir.Path("config.json");
        File.CreateSymbolicLink(a, dir.Path("blobs", "gone"));
        var e = Assert.Throws<ModelNotFoundException>(() => SafeTensorsFile.Open(a));
        Assert.Contains(a, e.Message);
        Assert.Contains("gone", e.Message);
    }

    [Fact]
    public void SpecialFilesWhereAModelFileShouldBeAreRefusedWithoutReading()
    {
        using var dir = new TempDir();
        // A FIFO would block the open forever; /dev/zero would never end.
        string fifo = dir.Path("model.safetensors");
        Assert.Equal(0, MkFifo(fifo, Convert.ToInt32("644", 8)));
        Assert.Equal(FileKind.Fifo, FileKinds.Of(fifo));
        var e = Assert.Throws<WeightFileException>(() => SafeTensorsFile.Open(fifo));
        Assert.Contains(fifo, e.Message);
        Assert.Contains("FIFO", e.Message);

        string zero = dir.Path("config.json");
        File.CreateSymbolicLink(zero, "/dev/zero");
        var z = Assert.Throws<WeightFileException>(() => T5Config.Load(zero));
        Assert.Contains(zero, z.Message);
        Assert.Contains("character device", z.Message);

        Directory.CreateDirectory(dir.Path("spiece.model"));
        var d = Assert.Throws<WeightFileException>(() => T5Tokenizer.FromModelFolder(dir.Root));
        Assert.Contains("a folder", d.Message);
    }

    [Fact]
    public void AnUnreadableFileNamesThePathAndTheFix()
    {
        using var dir = new TempDir();
        string path = dir.WriteText("config.json", File.ReadAllText(Fixtures.Path(Transformer)));
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(path, UnixFileMode.None);
        bool root = Environment.UserName == "root" || GetEuid() == 0;
        if (root)
        {
            // root reads anything: a file that cannot be read here is one whose read fails (a folder in its place).
            File.Delete(path);
            Directory.CreateDirectory(path);
        }
        var e = Assert.Throws<WeightFileException>(() => PixArtTransformerConfig.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Contains(root ? "a folder" : "permission denied", e.Message);
    }

    [Fact]
    public void OversizedConfigFilesAreRefusedBeforeReading()
    {
        using var dir = new TempDir();
        string path = dir.Path("config.json");
        using (var fs = File.Create(path)) fs.SetLength(ModelFiles.MaxConfigBytes + 1);   // sparse
        var e = Assert.Throws<WeightFileException>(() => ConfigJson.Load<PixArtTransformerConfig>(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("more than", e.Message);
    }

    [Theory]
    [InlineData("../../x")]
    [InlineData("..")]
    [InlineData("fp16/../../etc")]
    [InlineData("/etc/passwd")]
    [InlineData("fp16\0")]
    [InlineData(".hidden")]
    [InlineData("a b")]
    public void VariantsAreNamesNotPaths(string variant)
    {
        var e = Assert.Throws<ArgumentException>(() => ModelFolder.CheckVariant(variant));
        Assert.Equal("variant", e.ParamName);
        Assert.Throws<ArgumentException>(() => ModelFolder.FindWeightFiles(Fixtures.Path("tiny-pixart", "vae"), "diffusion_pytorch_model", variant));
        Assert.Throws<ArgumentException>(() => ModelFolder.HasWeights(Fixtures.Path("tiny-pixart", "vae"), "diffusion_pytorch_model", variant));
        Assert.Throws<ArgumentException>(() => ModelFolder.Open(Fixtures.Path("tiny-pixart")).VariantFallbacks(variant));
        Assert.Throws<ArgumentException>(() => PipelineFiles.Select(new HashSet<string> { "vae/config.json" }, ["vae"], variant, "org/repo"));
        using var hubDir = new TempDir();
        Assert.Throws<ArgumentException>(() => new HubCache(hubDir.Root).TryResolveSnapshot("org/repo", null, variant));
        Assert.Throws<ArgumentException>(() => ModelLocator.Resolve(Fixtures.Path("tiny-pixart"), null, variant));
        Assert.Throws<ArgumentException>(() => AutoencoderKL.FromFolder(Fixtures.Path("tiny-pixart", "vae"), variant, TorchSharp.torch.ScalarType.Float32));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("fp16")]
    [InlineData("bf16")]
    [InlineData("v1.5-ema_only")]
    public void OrdinaryVariantsPass(string? variant)
    {
        ModelFolder.CheckVariant(variant);
        // A variant the folder lacks falls back to the default weights, as before.
        Assert.Single(ModelFolder.FindWeightFiles(Fixtures.Path("tiny-pixart", "vae"), "diffusion_pytorch_model", variant));
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "mkfifo", SetLastError = true)]
    private static extern int MkFifo(string path, int mode);

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "geteuid")]
    private static extern uint GetEuid();
}
