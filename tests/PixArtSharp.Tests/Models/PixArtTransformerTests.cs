using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PixArtSharp.Tests.Models;

public class PixArtTransformerTests(ITestOutputHelper output)
{
    private const double Atol = 1e-5;   // README: atol 1e-5 on outputs of std ≈ 1

    private static string ModelDir(string fixture) =>
        Fixtures.Path(fixture == "lcm" ? "tiny-pixart-lcm" : "tiny-pixart", "transformer");

    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        foreach (var f in new[] { "lcm", "dpm" })
            foreach (var c in new[] { "masks_differ", "same_masks", "short_seq" })
                data.Add(f, c);
        return data;
    }

    private static Tensor Run(PixArtTransformer2DModel model, Reference r, string c, Action<string, Tensor>? trace = null, Tensor? timestep = null)
    {
        bool micro = r.Has($"{c}.added_cond_kwargs.resolution");
        return model.forward(r[$"{c}.hidden_states"], r[$"{c}.encoder_hidden_states"], r[$"{c}.encoder_attention_mask"],
            timestep ?? r[$"{c}.timestep"],
            micro ? r[$"{c}.added_cond_kwargs.resolution"] : null,
            micro ? r[$"{c}.added_cond_kwargs.aspect_ratio"] : null, trace);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesDiffusersOutputAndIntermediates(string fixture, string c)
    {
        using var r = new Reference($"expected/transformer_{fixture}");
        using var model = PixArtTransformer2DModel.FromFolder(ModelDir(fixture));
        Assert.Equal(fixture == "lcm", model.UseAdditionalConditions);

        var seen = new Dictionary<string, Tensor>();
        using var outp = Run(model, r, c, (name, t) => seen[name] = t.clone().DetachFromDisposeScope());

        var names = new List<string> { "pos_embed.output", "adaln_single.timestep", "adaln_single.embedded_timestep", "caption_projection.output" };
        for (int i = 0; i < model.transformer_blocks.Length; i++) names.Add($"block.{i}.output");
        names.AddRange(["norm_out.output", "proj_out.output"]);
        Assert.Equal(names.Order(), seen.Keys.Order());
        foreach (var n in names)
        {
            using var e = r[$"{c}.{n}"];
            double err = Compare.Close(e, seen[n], Atol, $"{fixture}/{c}.{n}");
            output.WriteLine($"{fixture}/{c}.{n}: max |Δ| = {err:E2}");
        }
        using var expected = r[$"{c}.output"];
        double outErr = Compare.Close(expected, outp, Atol, $"{fixture}/{c}.output");
        output.WriteLine($"{fixture}/{c}.output: max |Δ| = {outErr:E2}");
        foreach (var t in seen.Values) t.Dispose();
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void SincosTableMatchesNumpyFloat64(string fixture, string c)
    {
        using var r = new Reference($"expected/transformer_{fixture}");
        var cfg = PixArtTransformerConfig.Load(Path.Combine(ModelDir(fixture), "config.json"));
        using var hs = r[$"{c}.hidden_states"];
        long h = hs.shape[2] / cfg.PatchSize!.Value, w = hs.shape[3] / cfg.PatchSize.Value;
        using var table = PixArtEmbeddings.SincosPosEmbed2d(cfg.InnerDim, h, w, cfg.BaseSize, cfg.InterpolationScaleResolved);
        using var e = r[$"{c}.sincos_pos_embed"];
        double err = Compare.Close(e, table, 1e-6, $"{fixture}/{c}.sincos_pos_embed");
        output.WriteLine($"{fixture}/{c}.sincos_pos_embed ({h}×{w}): max |Δ| = {err:E2}");
    }

    [Fact]
    public void FloatTimestepGivesTheSameResultAsInt64()
    {
        using var r = new Reference("expected/transformer_lcm");
        using var model = PixArtTransformer2DModel.FromFolder(ModelDir("lcm"));
        using var ts = r["short_seq.timestep"];
        using var tf = ts.to(ScalarType.Float32);
        using var a = Run(model, r, "short_seq");
        using var b = Run(model, r, "short_seq", timestep: tf);
        Assert.Equal(0.0, Compare.MaxAbsDiff(a, b));
    }

    /// <summary>
    /// bf16 weights: everything but the fixed tables runs in bf16. Measured max |Δ| vs the fp32 fixtures over the
    /// three cases (outputs of std ≈ 1, max ≈ 3.6): lcm 2.9e-2, dpm 3.1e-2 — bf16 keeps 8 significant bits, i.e.
    /// ~4e-3 relative per rounding, accumulated through two blocks. The bound 0.08 leaves ~2.5× margin; a missed
    /// upcast or a broken kernel shows up as O(1) errors (the bf16 conv2d bug worked around in PatchEmbed gave 0.95).
    /// </summary>
    [Theory]
    [InlineData("lcm")]
    [InlineData("dpm")]
    public void Bf16WeightsStayCloseToFp32Fixtures(string fixture)
    {
        const double bound = 0.08;
        using var r = new Reference($"expected/transformer_{fixture}");
        using var model = PixArtTransformer2DModel.FromFolder(ModelDir(fixture), dtype: ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, model.DType);
        Assert.Equal(ScalarType.BFloat16, model.proj_out.weight.dtype);
        double worst = 0;
        foreach (var c in new[] { "masks_differ", "same_masks", "short_seq" })
        {
            using var outp = Run(model, r, c);
            Assert.Equal(ScalarType.BFloat16, outp.dtype);
            using var e = r[$"{c}.output"];
            double err = Compare.MaxAbsDiff(e, outp);
            output.WriteLine($"bf16 {fixture}/{c}.output: max |Δ| = {err:E2} (fp32 output std ≈ 1)");
            worst = Math.Max(worst, err);
        }
        Assert.True(worst <= bound, $"bf16 {fixture}: max |Δ| {worst:E2} > {bound}");
    }

    /// <summary>
    /// The claim the bf16 path relies on: libtorch's CPU LayerNorm on bf16 input computes mean and variance in
    /// float32, so a large common offset does not wreck the statistics. Each bf16 result must equal the float32
    /// LayerNorm of the same (bf16-valued) input up to the final bf16 rounding (half an ulp ≤ 2^-8·|ref|, checked with 25 % slack). The same
    /// normalisation done with bf16 statistics misses that bound by far, so this test can tell them apart.
    /// </summary>
    [Fact]
    public void LayerNormOnBf16ComputesStatisticsInFloat32()
    {
        using var scope = NewDisposeScope();
        var g = new Generator(7);
        var xb = randn([4, 64, 1152], generator: g).add(30.0).to(ScalarType.BFloat16);
        var x32 = xb.to(ScalarType.Float32);
        var reference = nn.functional.layer_norm(x32, [1152], eps: 1e-6);
        var bound = reference.abs().mul(1.25 * Math.Pow(2, -8)).add(1e-6);   // 25 % slack over the worst-case half ulp

        var bf = nn.functional.layer_norm(xb, [1152], eps: 1e-6);
        Assert.Equal(ScalarType.BFloat16, bf.dtype);
        var err = (bf.to(ScalarType.Float32) - reference).abs();
        output.WriteLine($"bf16 LayerNorm vs fp32 LayerNorm: max |Δ| = {err.max().item<float>():E2}; max |Δ|/bound = {(err / bound).max().item<float>():F2}");
        Assert.True(err.le(bound).all().item<bool>(), "bf16 LayerNorm is off by more than its final rounding: statistics are not fp32");

        var mean = xb.mean([-1], keepdim: true);                                       // bf16 statistics
        var naive = (xb - mean) / ((xb - mean).square().mean([-1], keepdim: true) + 1e-6).sqrt();
        var naiveErr = (naive.to(ScalarType.Float32) - reference).abs();
        output.WriteLine($"bf16-statistics LayerNorm: max |Δ| = {naiveErr.max().item<float>():E2}");
        Assert.False(naiveErr.le(bound).all().item<bool>(), "the check cannot tell bf16 statistics from fp32 ones");
    }

    [Fact]
    public void MissingVariantLoadsTheDefaultWeights()
    {
        // As diffusers: a component without the requested variant loads its default weights (the pipeline warns).
        using var m = PixArtTransformer2DModel.FromFolder(ModelDir("dpm"), "fp16");
        Assert.NotNull(m);
    }

    [Theory]
    [InlineData("PixArt-XL-2-1024-MS", 128, true, 2.0, 64)]
    [InlineData("PixArt-LCM-XL-2-1024-MS", 128, true, 2.0, 64)]
    [InlineData("PixArt-XL-2-512x512", 64, false, 1.0, 32)]
    public void RealConfigsLoadWithDerivedValues(string repo, int sampleSize, bool micro, double interp, int baseSize)
    {
        var c = PixArtTransformerConfig.Load(Fixtures.Path("real-configs", repo, "transformer", "config.json"));
        Assert.Equal("Transformer2DModel", c.ClassName);
        Assert.Equal(sampleSize, c.SampleSize);
        Assert.Null(c.UseAdditionalConditions);
        Assert.Null(c.InterpolationScale);
        Assert.Equal(micro, c.UseAdditionalConditionsResolved);
        Assert.Equal(interp, c.InterpolationScaleResolved);
        Assert.Equal(baseSize, c.BaseSize);
        Assert.Equal(1152, c.InnerDim);
        Assert.Equal(28, c.NumLayers);
        Assert.Equal(4096, c.CaptionChannels);
        Assert.Equal(8, c.OutChannelsResolved);
    }

    [Fact]
    public void TinyConfigsDeriveLikeTheFixtures()
    {
        var lcm = PixArtTransformerConfig.Load(Path.Combine(ModelDir("lcm"), "config.json"));
        var dpm = PixArtTransformerConfig.Load(Path.Combine(ModelDir("dpm"), "config.json"));
        using var rl = new Reference("expected/transformer_lcm");
        using var rd = new Reference("expected/transformer_dpm");
        foreach (var (c, r) in new[] { (lcm, rl), (dpm, rd) })
        {
            var d = r.Json.GetProperty("derived");
            Assert.Equal(d.GetProperty("inner_dim").GetInt32(), c.InnerDim);
            Assert.Equal(d.GetProperty("use_additional_conditions").GetBoolean(), c.UseAdditionalConditionsResolved);
            Assert.Equal(d.GetProperty("pos_embed.base_size").GetInt32(), c.BaseSize);
            Assert.Equal(d.GetProperty("pos_embed.interpolation_scale").GetDouble(), c.InterpolationScaleResolved);
        }
    }

    private static string WriteConfig(string dir, Func<string, string> edit)
    {
        string text = File.ReadAllText(Fixtures.Path("real-configs", "PixArt-XL-2-1024-MS", "transformer", "config.json"));
        string path = Path.Combine(dir, $"config-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, edit(text));
        return path;
    }

    [Theory]
    [InlineData("\"norm_type\": \"ada_norm_single\"", "\"norm_type\": \"ada_norm_zero\"", "norm_type 'ada_norm_zero'")]
    [InlineData("\"activation_fn\": \"gelu-approximate\"", "\"activation_fn\": \"geglu\"", "activation_fn 'geglu'")]
    [InlineData("\"_class_name\": \"Transformer2DModel\"", "\"_class_name\": \"UNet2DConditionModel\"", "UNet2DConditionModel")]
    [InlineData("\"double_self_attention\": false", "\"double_self_attention\": true", "double_self_attention")]
    [InlineData("\"cross_attention_dim\": 1152", "\"cross_attention_dim\": 1024", "cross_attention_dim 1024")]
    [InlineData("\"attention_type\": \"default\"", "\"attention_type\": \"gated\"", "attention_type 'gated'")]
    public void UnsupportedConfigsAreRejected(string from, string to, string mention)
    {
        string path = WriteConfig(Path.GetTempPath(), t => { Assert.Contains(from, t); return t.Replace(from, to); });
        try
        {
            var ex = Assert.Throws<ModelConfigException>(() => PixArtTransformerConfig.Load(path));
            Assert.Contains(mention, ex.Message);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void ConfigWithoutSampleSizeIsRejected()
    {
        string path = WriteConfig(Path.GetTempPath(), t => t.Replace("\"sample_size\": 128,", ""));
        try
        {
            var ex = Assert.Throws<ModelConfigException>(() => PixArtTransformerConfig.Load(path));
            Assert.Contains("sample_size", ex.Message);
        }
        finally { File.Delete(path); }
    }

    private static Dictionary<string, Tensor> TinyWeights(string fixture)
    {
        using var f = SafeTensorsFile.Open(Path.Combine(ModelDir(fixture), "diffusion_pytorch_model.safetensors"));
        return f.Tensors.Keys.ToDictionary(k => k, k => { using var t = f.Load(k); return t.clone(); });
    }

    [Fact]
    public void MissingWeightIsNamed()
    {
        var cfg = PixArtTransformerConfig.Load(Path.Combine(ModelDir("dpm"), "config.json"));
        var tensors = TinyWeights("dpm");
        tensors.Remove("transformer_blocks.1.attn2.to_k.weight");
        using var w = Weights.FromTensors(tensors, ScalarType.Float32);
        var ex = Assert.Throws<WeightFileException>(() => new PixArtTransformer2DModel(cfg, w));
        Assert.Contains("'transformer_blocks.1.attn2.to_k.weight' is missing", ex.Message);
    }

    [Fact]
    public void MisShapedWeightIsNamed()
    {
        var cfg = PixArtTransformerConfig.Load(Path.Combine(ModelDir("lcm"), "config.json"));
        var tensors = TinyWeights("lcm");
        tensors["adaln_single.emb.resolution_embedder.linear_2.weight"] = zeros(8, 9);
        using var w = Weights.FromTensors(tensors, ScalarType.Float32);
        var ex = Assert.Throws<WeightFileException>(() => new PixArtTransformer2DModel(cfg, w));
        Assert.Contains("'adaln_single.emb.resolution_embedder.linear_2.weight' has shape [8, 9]", ex.Message);
    }

    [Fact]
    public void UnusedWeightsAreReported()
    {
        // The LCM checkpoint under a config without micro-conditioning: its size embedders are left over.
        var cfg = PixArtTransformerConfig.Load(Path.Combine(ModelDir("lcm"), "config.json"));
        cfg.UseAdditionalConditions = false;
        using var w = Weights.FromTensors(TinyWeights("lcm"), ScalarType.Float32);
        var ex = Assert.Throws<WeightFileException>(() => new PixArtTransformer2DModel(cfg, w));
        Assert.Contains("8 weight(s) do not belong", ex.Message);
        Assert.Contains("adaln_single.emb.aspect_ratio_embedder.linear_1.bias", ex.Message);
    }

    [Fact]
    public void BadInputsRaisePreciseArgumentExceptions()
    {
        using var r = new Reference("expected/transformer_lcm");
        using var model = PixArtTransformer2DModel.FromFolder(ModelDir("lcm"));
        const string c = "short_seq";
        using var hs = r[$"{c}.hidden_states"];
        using var ehs = r[$"{c}.encoder_hidden_states"];
        using var mask = r[$"{c}.encoder_attention_mask"];
        using var ts = r[$"{c}.timestep"];
        using var res = r[$"{c}.added_cond_kwargs.resolution"];
        using var ar = r[$"{c}.added_cond_kwargs.aspect_ratio"];

        void Expect(string param, string mention, Func<Tensor> call)
        {
            var ex = Assert.Throws<ArgumentException>(() => { using var _ = call(); });
            Assert.Equal(param, ex.ParamName);
            Assert.Contains(mention, ex.Message);
        }
        using var odd = hs[.., .., ..5, ..];
        Expect("hiddenStates", "multiples of the patch size 2; got 5×10", () => model.forward(odd, ehs, mask, ts, res, ar));
        using var three = hs[.., ..3];
        Expect("hiddenStates", "[B, 4, H, W]", () => model.forward(three, ehs, mask, ts, res, ar));
        using var ehs1 = ehs[..1];
        Expect("encoderHiddenStates", "B=2", () => model.forward(hs, ehs1, mask, ts, res, ar));
        using var mask9 = mask[.., ..9];
        Expect("encoderAttentionMask", "L=10", () => model.forward(hs, ehs, mask9, ts, res, ar));
        using var ts1 = ts[..1];
        Expect("timestep", "[B=2]", () => model.forward(hs, ehs, mask, ts1, res, ar));
        Expect("resolution", "micro-conditioning", () => model.forward(hs, ehs, mask, ts, null, ar));
        Expect("aspectRatio", "micro-conditioning", () => model.forward(hs, ehs, mask, ts, res, null));
        using var res3 = zeros(2, 3);
        Expect("resolution", "[B=2, 2]", () => model.forward(hs, ehs, mask, ts, res3, ar));
    }
}
