using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Tests.Loading;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Models;

/// <summary>diffusers' AutoencoderTiny (TAESD) against taesd/ of the fixtures (tolerances from its README).</summary>
public class AutoencoderTinyTests(ITestOutputHelper output)
{
    private static readonly string TinyDir = Fixtures.Path("taesd", "tiny-taesd");
    private const double Atol = 1e-5;

    // Loaded once: the tiny model is read-only in every test.
    private static readonly Lazy<AutoencoderTiny> _vae32 = new(() => AutoencoderTiny.FromFolder(TinyDir, null, ScalarType.Float32));

    // ---- config and structure ----

    [Fact]
    public void TinyConfigLoadsAndEveryCheckpointKeyIsAField()
    {
        var vae = _vae32.Value;
        var c = vae.Config;
        Assert.Equal([16, 16, 16, 16], c.DecoderBlockOutChannels);
        Assert.Equal([1, 2, 2, 2], c.NumEncoderBlocks);
        Assert.Equal([2, 2, 2, 1], c.NumDecoderBlocks);
        Assert.Equal(1.0, c.ScalingFactor);
        Assert.Equal(8, vae.VaeScaleFactor);
        Assert.Equal(1.0, vae.ScalingFactor);
        Assert.Equal(4, vae.LatentChannels);
        // The model's parameters are exactly the file's tensors, by key and value (FromFolder also ran CheckAllUsed).
        using var st = SafeTensorsFile.Open(Path.Combine(TinyDir, "diffusion_pytorch_model.safetensors"));
        var mine = vae.NamedParameters().ToDictionary(p => p.Key, p => p.Tensor);
        Assert.Equal(st.Tensors.Keys.Order(StringComparer.Ordinal), mine.Keys.Order(StringComparer.Ordinal));
        foreach (var key in new[] { "decoder.layers.13.weight", "encoder.layers.8.weight", "decoder.layers.15.bias", "encoder.layers.10.conv.4.bias" })
        {
            using var t = st.Load(key);
            Assert.Equal(0.0, Compare.MaxAbsDiff(t, mine[key]));
        }
        // The upsampling convs and the encoder's stride-2 convs have no bias; the last convs do.
        Assert.Null(((TinyConv)vae.decoder.layers[5]).conv.bias);
        Assert.Null(((TinyConv)vae.encoder.layers[2]).conv.bias);
        Assert.NotNull(((TinyConv)vae.decoder.layers[15]).conv.bias);
        Assert.Equal("upsample", ((TinyFunction)vae.decoder.layers[4]).Name);
    }

    [Fact]
    public void RealConfigHasTheStatedParameterCount()
    {
        var path = Fixtures.Path("taesd", "real-config.json");
        var c = AutoencoderTinyConfig.Load(path);
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(path));
        long expected = doc.RootElement.GetProperty("parameters").GetInt64();
        long expectedDecoder = doc.RootElement.GetProperty("decoder_parameters").GetInt64();
        using var w = Weights.Random(3, ScalarType.BFloat16);
        using var vae = new AutoencoderTiny(c, w);
        long Count(IEnumerable<(string Key, Tensor Tensor)> ps) => ps.Sum(p => p.Tensor.numel());
        long total = Count(vae.NamedParameters()), decoder = Count(vae.decoder.NamedParameters());
        output.WriteLine($"real TAESD: {total} parameters (decoder {decoder}); {w.UsedKeys.Count} keys");
        Assert.Equal(2445063, expected);
        Assert.Equal(expected, total);
        Assert.Equal(expectedDecoder, decoder);
        Assert.Equal(w.UsedKeys.Count, vae.NamedParameters().Count());
        Assert.Contains("decoder.layers.18.bias", w.UsedKeys);              // 64 → 3, the last conv
        Assert.Contains("encoder.layers.14.weight", w.UsedKeys);            // 64 → 4
        // The bf16-defective shapes (3 and 4 outputs) run padded to 16 outputs; the others as they are.
        Assert.True(((TinyConv)vae.decoder.layers[18]).conv.RunsPadded);
        Assert.True(((TinyConv)vae.encoder.layers[14]).conv.RunsPadded);
        Assert.False(((TinyConv)vae.decoder.layers[16]).conv.RunsPadded);
        Assert.Equal([3L, 64, 3, 3], ((TinyConv)vae.decoder.layers[18]).conv.weight.shape);
        using var latents = torch.randn(1, 4, 3, 5);
        using var img = vae.Decode(latents);
        Assert.Equal([1L, 3, 24, 40], img.shape);
        Assert.Equal(ScalarType.Float32, img.dtype);
        Assert.False(img.isnan().any().item<bool>());
        using var image = torch.rand(1, 3, 24, 40).mul_(2).sub_(1);
        using var enc = vae.Encode(image);
        Assert.Equal([1L, 4, 3, 5], enc.shape);
    }

    /// <summary>
    /// The real architecture in bf16 (64 channels: the channels-last AMX/oneDNN kernels, the padded last convs)
    /// against fp32 compute with the same bf16-rounded weights, on seeded random weights at 128 px. Measured:
    /// decode max |Δ| 0.95 % of the largest output value, encode 1.2 % of the largest latent; bound 4 %.
    /// </summary>
    [Fact]
    public void RealSizeBf16ComputeStaysCloseToFp32()
    {
        var c = AutoencoderTinyConfig.Load(Fixtures.Path("taesd", "real-config.json"));
        var raw = new Dictionary<string, Tensor>();
        try
        {
            using (var wr = Weights.Random(21, ScalarType.Float32, std: 0.05, created: (k, t) => raw[k] = t.to(ScalarType.BFloat16).to(ScalarType.Float32).DetachFromDisposeScope()))
            using (new AutoencoderTiny(c, wr)) { }
            using var w32 = Weights.FromTensors(raw, ScalarType.Float32);
            using var w16 = Weights.FromTensors(raw, ScalarType.BFloat16);
            using var vae32 = new AutoencoderTiny(c, w32);
            using var vae16 = new AutoencoderTiny(c, w16);
            using var g = new Generator(8);
            using var latents = torch.randn([1, 4, 16, 16], generator: g).mul_(2);
            using var d32 = vae32.Decode(latents);
            using var d16 = vae16.Decode(latents);
            double rel = Compare.MaxAbsDiff(d32, d16) / Compare.MaxAbs(d32);
            using var image = torch.rand([1, 3, 128, 128], generator: g).mul_(2).sub_(1);
            using var e32 = vae32.Encode(image);
            using var e16 = vae16.Encode(image);
            double relE = Compare.MaxAbsDiff(e32, e16) / Compare.MaxAbs(e32);
            output.WriteLine($"real size bf16 vs fp32 (same weights): decode max|Δ|/max|ref| {rel:E2} (max|ref| {Compare.MaxAbs(d32):F2}), encode {relE:E2} (max|ref| {Compare.MaxAbs(e32):F2})");
            Assert.True(rel < 0.04, $"decode rel {rel}");
            Assert.True(relE < 0.04, $"encode rel {relE}");
        }
        finally
        {
            foreach (var t in raw.Values) t.Dispose();
        }
    }

    [Theory]
    [InlineData("\"num_decoder_blocks\": [3, 3, 3]", "num_decoder_blocks")]
    [InlineData("\"encoder_block_out_channels\": [64, 32, 64, 64]", "encoder_block_out_channels")]
    [InlineData("\"act_fn\": \"tanh\"", "act_fn")]
    [InlineData("\"upsample_fn\": \"bicubic\"", "upsample_fn")]
    [InlineData("\"upsampling_scaling_factor\": 3", "upsampling_scaling_factor")]
    [InlineData("\"latent_magnitude\": 0", "latent_magnitude")]
    [InlineData("\"_class_name\": \"AutoencoderKL\"", "AutoencoderKL")]
    [InlineData("\"num_encoder_blocks\": [1, -3, 3, 3]", "num_encoder_blocks")]
    public void UnsupportedConfigsFailNamingTheFileAndKey(string body, string expectedInMessage)
    {
        using var dir = new TempDir();
        string path = dir.WriteText("config.json", "{" + body + "}");
        var e = Assert.Throws<WeightFileException>(() => AutoencoderTinyConfig.Load(path));
        Assert.Contains(expectedInMessage, e.Message);
        Assert.Contains(path, e.Message);
        output.WriteLine(e.Message);
    }

    // ---- fp32 vs the fixtures ----

    [Fact]
    public void DecodeMatchesFixture()
    {
        using var r = new Reference("taesd/taesd");
        using var latents = r["decode.latents"];
        using var expected = r["decode.sample"];
        // Per image (the default path for a batch).
        using var sample = _vae32.Value.Decode(latents);
        Assert.Equal(ScalarType.Float32, sample.dtype);
        output.WriteLine($"decode.sample: max |Δ| {Compare.Close(expected, sample, Atol, "decode.sample"):E2}");
        // Whole batch with the trace (diffusers' own path): the first clamp, and the same sample.
        Tensor? clamp = null;
        using var traced = _vae32.Value.Decode(latents, (name, t) => { Assert.Equal("decoder.first_clamp", name); clamp = t.clone().DetachFromDisposeScope(); });
        using (clamp)
        {
            Assert.NotNull(clamp);
            using var e = r["decode.first_clamp"];
            output.WriteLine($"decode.first_clamp: max |Δ| {Compare.Close(e, clamp!, Atol, "decode.first_clamp"):E2}");
        }
        output.WriteLine($"decode.sample (batched): max |Δ| {Compare.Close(expected, traced, Atol, "decode.sample batched"):E2}");
        // Each image of a batch is bit-identical to decoding it alone.
        using var second = _vae32.Value.Decode(latents[1..2]);
        Assert.Equal(0.0, Compare.MaxAbsDiff(sample[1..2], second));
    }

    [Fact]
    public void EncodeMatchesFixture()
    {
        using var r = new Reference("taesd/taesd");
        using var image = r["encode.image"];
        using var latents = _vae32.Value.Encode(image);
        using var expected = r["encode.latents"];
        Assert.Equal(ScalarType.Float32, latents.dtype);
        output.WriteLine($"encode.latents: max |Δ| {Compare.Close(expected, latents, Atol, "encode.latents"):E2}");

        // Image-to-image's retrieve_latents: the same latents, and no draw from the generator (its next normal is
        // the one a fresh generator of the same seed gives first).
        using var gen = new Generator(77);
        var noise = new PixArtSharp.Schedulers.NoiseSource([gen]);
        using var retrieved = _vae32.Value.EncodeLatents(image, noise);
        Assert.Equal(0.0, Compare.MaxAbsDiff(latents, retrieved));
        using var next = noise.Randn([8], ScalarType.Float32, CPU);
        using var fresh = new Generator(77);
        using var first = torch.randn([8], ScalarType.Float32, generator: fresh);
        Assert.Equal(0.0, Compare.MaxAbsDiff(first, next));
    }

    [Fact]
    public void ScaleAndUnscaleLatentsMatchFixture()
    {
        using var r = new Reference("taesd/taesd");
        using var latents = r["decode.latents"];
        using var scaled = _vae32.Value.ScaleLatents(latents);
        // The fixture's unscale_latents is the round trip unscale(scale(latents)): the latents again, except
        // where the [0, 1] clamp cut them off at ±latent_magnitude (measured: it equals (scale − 0.5)·6).
        using var unscaled = _vae32.Value.UnscaleLatents(scaled);
        using var es = r["scale_latents"];
        using var eu = r["unscale_latents"];
        output.WriteLine($"scale_latents: max |Δ| {Compare.Close(es, scaled, Atol, "scale_latents"):E2}");
        output.WriteLine($"unscale_latents: max |Δ| {Compare.Close(eu, unscaled, Atol, "unscale_latents"):E2}");
        // The input is left as it was.
        using var again = r["decode.latents"];
        Assert.Equal(0.0, Compare.MaxAbsDiff(again, latents));
    }

    // ---- reduced precision ----

    /// <summary>
    /// bf16 weights and activations, fp32 output. Measured on this fixture: decode.sample max |Δ| 1.91e-2 against
    /// the fp32 reference (values in [−1.25, 1.10]), encode.latents 1.92e-2 (values in [−3.2, 1.4]); with the last
    /// convs in fp32 (VaeConv2d's fp32 route) instead of bf16 padded to 16 outputs it was 1.58e-2 and 1.40e-2. Bounds ≈ 2×.
    /// </summary>
    [Fact]
    public void Bf16DecodeAndEncodeStayClose()
    {
        using var vae = AutoencoderTiny.FromFolder(TinyDir, null, ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, vae.decoder.NamedParameters().First().Tensor.dtype);
        using var r = new Reference("taesd/taesd");
        using var latents = r["decode.latents"];
        using var sample = vae.Decode(latents);
        Assert.Equal(ScalarType.Float32, sample.dtype);
        using var expected = r["decode.sample"];
        output.WriteLine($"bf16 decode.sample: max |Δ| {Compare.Close(expected, sample, 0.04, "bf16 decode.sample"):E3}");
        using var image = r["encode.image"];
        using var enc = vae.Encode(image);
        Assert.Equal(ScalarType.Float32, enc.dtype);
        using var el = r["encode.latents"];
        output.WriteLine($"bf16 encode.latents: max |Δ| {Compare.Close(el, enc, 0.04, "bf16 encode.latents"):E3}");
    }

    // ---- folder layouts ----

    [Fact]
    public void LoadsFromAVaeSubfolderAndTheFp16VariantName()
    {
        using var dir = new TempDir();
        // A pipeline-style folder: <dir>/vae/config.json + diffusion_pytorch_model.fp16.safetensors (fp16 weights).
        Directory.CreateDirectory(dir.Path("vae"));
        File.Copy(Path.Combine(TinyDir, "config.json"), dir.Path("vae", "config.json"));
        using (var st = SafeTensorsFile.Open(Path.Combine(TinyDir, "diffusion_pytorch_model.safetensors")))
        {
            var half = st.Tensors.Keys.ToDictionary(k => k, k => { using var t = st.Load(k); return t.to(ScalarType.Float16); });
            try { SafeTensorsWriter.Write(dir.Path("vae", "diffusion_pytorch_model.fp16.safetensors"), half); }
            finally { foreach (var t in half.Values) t.Dispose(); }
        }
        using var r = new Reference("taesd/taesd");
        using var latents = r["decode.latents"];
        using var expected = r["decode.sample"];
        using (var vae = AutoencoderTiny.FromFolder(dir.Root, "fp16", ScalarType.Float32))
        using (var sample = vae.Decode(latents))
            // fp16-rounded weights computed in fp32.
            output.WriteLine($"vae/ + fp16 variant: max |Δ| {Compare.Close(expected, sample, 5e-3, "fp16-variant decode"):E2}");
        // Without the variant there are no default weights in that folder: the error says which files it looked for.
        var e = Assert.Throws<ModelNotFoundException>(() => AutoencoderTiny.FromFolder(dir.Root, null, ScalarType.Float32));
        Assert.Contains("diffusion_pytorch_model.safetensors", e.Message);
        Assert.Contains("--variant fp16", e.Message);
        // A requested variant the folder lacks falls back to the default weights, as diffusers does.
        using var vae2 = AutoencoderTiny.FromFolder(TinyDir, "fp16", ScalarType.Float32);
        using var sample2 = vae2.Decode(latents);
        Compare.Close(expected, sample2, Atol, "fallback from a missing variant");
    }

    // ---- bad folders, configs and weights ----

    [Fact]
    public void MissingFolderOrConfigSaysWhatToGive()
    {
        using var dir = new TempDir();
        var e1 = Assert.Throws<ModelNotFoundException>(() => AutoencoderTiny.FromFolder(dir.Path("nope"), null, ScalarType.Float32));
        Assert.Contains(dir.Path("nope"), e1.Message);
        var e2 = Assert.Throws<ModelNotFoundException>(() => AutoencoderTiny.FromFolder(dir.Root, null, ScalarType.Float32));
        Assert.Contains(Path.Combine(dir.Root, "config.json"), e2.Message);
    }

    [Fact]
    public void AnAutoencoderKLFolderIsRefusedByName()
    {
        string kl = Fixtures.Path("tiny-pixart", "vae");
        var e = Assert.Throws<WeightFileException>(() => AutoencoderTiny.FromFolder(kl, null, ScalarType.Float32));
        Assert.Contains(Path.Combine(kl, "config.json"), e.Message);
        Assert.Contains("AutoencoderKL", e.Message);
        output.WriteLine(e.Message);
        // A pipeline folder whose vae/ is the SD VAE: the same refusal, through the vae/ layout.
        var e2 = Assert.Throws<WeightFileException>(() => AutoencoderTiny.FromFolder(Fixtures.Path("tiny-pixart"), null, ScalarType.Float32));
        Assert.Contains("AutoencoderKL", e2.Message);
    }

    [Fact]
    public void WeightsThatDoNotFitNameTheFileAndKey()
    {
        using var st = SafeTensorsFile.Open(Path.Combine(TinyDir, "diffusion_pytorch_model.safetensors"));
        var all = st.Tensors.Keys.ToDictionary(k => k, k => st.Load(k).clone());
        try
        {
            void Check(string name, Func<Dictionary<string, Tensor>, Dictionary<string, Tensor>> edit, string configText, params string[] inMessage)
            {
                using var dir = new TempDir();
                dir.WriteText("config.json", configText);
                string file = dir.Path("diffusion_pytorch_model.safetensors");
                SafeTensorsWriter.Write(file, edit(all));
                var e = Assert.Throws<WeightFileException>(() => AutoencoderTiny.FromFolder(dir.Root, null, ScalarType.Float32));
                Assert.Contains(file, e.Message);
                foreach (var s in inMessage) Assert.Contains(s, e.Message);
                output.WriteLine($"{name}: {e.Message}");
            }
            string config = File.ReadAllText(Path.Combine(TinyDir, "config.json"));

            Check("missing", d => d.Where(p => p.Key != "decoder.layers.15.bias").ToDictionary(), config, "'decoder.layers.15.bias'", "missing");
            Check("extra", d => d.Append(new("decoder.layers.13.bias", all["decoder.layers.15.bias"])).ToDictionary(), config, "decoder.layers.13.bias");
            // The real TAESD's config over the tiny weights: shapes disagree, named by key.
            Check("shape", d => d, File.ReadAllText(Fixtures.Path("taesd", "real-config.json")), "'encoder.layers.0.weight'", "[16, 3, 3, 3]", "[64, 3, 3, 3]");
            // One level fewer in the decoder: the layer indices shift and a key is left over or missing.
            Check("levels", d => d, config.Replace("\"num_decoder_blocks\": [\n    2,", "\"num_decoder_blocks\": [\n    3,"), "decoder.layers.");
        }
        finally
        {
            foreach (var t in all.Values) t.Dispose();
        }

        // A corrupt weight file is refused by the safetensors reader, naming it.
        using var bad = new TempDir();
        File.Copy(Path.Combine(TinyDir, "config.json"), bad.Path("config.json"));
        string badFile = bad.Write("diffusion_pytorch_model.safetensors", [1, 2, 3]);
        var ex = Assert.Throws<WeightFileException>(() => AutoencoderTiny.FromFolder(bad.Root, null, ScalarType.Float32));
        Assert.Contains(badFile, ex.Message);
    }

    [Fact]
    public void BadInputsNameTheArgument()
    {
        var vae = _vae32.Value;
        using var wrongChannels = torch.zeros(1, 3, 4, 4);
        Assert.Equal("latents", Assert.Throws<ArgumentException>(() => vae.Decode(wrongChannels)).ParamName);
        using var threeD = torch.zeros(4, 4, 4);
        Assert.Equal("latents", Assert.Throws<ArgumentException>(() => vae.Decode(threeD)).ParamName);
        using var wrongImage = torch.zeros(1, 4, 16, 16);
        Assert.Equal("image", Assert.Throws<ArgumentException>(() => vae.Encode(wrongImage)).ParamName);
        using var ints = torch.zeros(new long[] { 1, 4, 4, 4 }, ScalarType.Int64);
        Assert.Equal("latents", Assert.Throws<ArgumentException>(() => vae.Decode(ints)).ParamName);
    }
}
