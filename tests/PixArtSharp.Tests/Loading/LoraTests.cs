using System.Security.Cryptography;
using PixArtSharp.Loading;
using PixArtSharp.Loading.Lora;
using PixArtSharp.Models;
using PixArtSharp.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Tests.Loading;

public class LoraTests(ITestOutputHelper output)
{
    private static string SigmaTransformer => Fixtures.Path("tiny-pixart-sigma", "transformer");
    private static string PeftDir => Fixtures.Path("tiny-pixart-sigma-lora", "peft");
    private static string KohyaFile => Fixtures.Path("tiny-pixart-sigma-lora", "kohya.safetensors");

    private static PixArtTransformer2DModel Sigma(params (LoraAdapter, double)[] loras) =>
        PixArtTransformer2DModel.FromFolder(SigmaTransformer, loras: loras);

    /// <summary>Every Linear of the model by module path.</summary>
    private static Dictionary<string, Linear> Linears(PixArtTransformer2DModel m)
    {
        var d = new Dictionary<string, Linear>(StringComparer.Ordinal);
        for (int i = 0; i < m.transformer_blocks.Length; i++)
        {
            var b = m.transformer_blocks[i];
            foreach (var (attn, name) in new[] { (b.attn1, "attn1"), (b.attn2, "attn2") })
            {
                d[$"transformer_blocks.{i}.{name}.to_q"] = attn.to_q;
                d[$"transformer_blocks.{i}.{name}.to_k"] = attn.to_k;
                d[$"transformer_blocks.{i}.{name}.to_v"] = attn.to_v;
                d[$"transformer_blocks.{i}.{name}.to_out.0"] = attn.to_out[0];
            }
            d[$"transformer_blocks.{i}.ff.net.0.proj"] = b.ff.net_0_proj;
            d[$"transformer_blocks.{i}.ff.net.2"] = b.ff.net_2;
        }
        d["proj_out"] = m.proj_out;
        return d;
    }

    private static string[] TargetedLinears()
    {
        using var r = new Reference("expected/family/lora_peft_scale1");
        return r.Json.GetProperty("lora").GetProperty("targeted_linears").EnumerateArray().Select(e => e.GetString()!).ToArray();
    }

    [Fact]
    public void PeftAndKohyaLayoutsReadAsTheSameAdapter()
    {
        using var peft = LoraAdapter.Load(PeftDir);
        using var kohya = LoraAdapter.Load(KohyaFile);
        Assert.Equal(LoraLayout.Peft, peft.Layout);
        Assert.Equal(LoraLayout.Kohya, kohya.Layout);
        Assert.Equal(20, peft.Modules.Count);   // 40 PEFT keys, 60 kohya keys (README)
        Assert.Equal(20, kohya.Modules.Count);
        Assert.Equal(TargetedLinears().Order(StringComparer.Ordinal), peft.Modules.Select(m => m.Name).Order(StringComparer.Ordinal));
        Assert.All(peft.Modules.Concat(kohya.Modules), m => Assert.Equal(2.0, m.Factor));   // alpha 8 / r 4
        Assert.Equal("peft", peft.DisplayName);
        Assert.Equal("kohya", kohya.DisplayName);
        string sha = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(KohyaFile)));
        Assert.Equal(sha[..12], kohya.ShortHash);
        Assert.Equal(Path.Combine(PeftDir, "adapter_model.safetensors"), peft.WeightFile);
        Assert.Equal($"kohya ({sha[..12]}) × 0.5", kohya.Describe(0.5));
        // The config's own file also works as the path.
        using var direct = LoraAdapter.Load(Path.Combine(PeftDir, "adapter_model.safetensors"));
        Assert.Equal(LoraLayout.Peft, direct.Layout);
    }

    [Fact]
    public void PeftAndKohyaMergeToTheSameWeights()
    {
        using var peft = LoraAdapter.Load(PeftDir);
        using var kohya = LoraAdapter.Load(KohyaFile);
        using var basis = Sigma();
        using var a = Sigma((peft, 1.0));
        using var b = Sigma((kohya, 1.0));
        var targeted = TargetedLinears().ToHashSet();
        var (la, lb, l0) = (Linears(a), Linears(b), Linears(basis));
        double worst = 0;
        foreach (var (name, lin) in la)
        {
            Assert.Equal(0.0, Compare.MaxAbsDiff(lin.weight, lb[name].weight));   // both layouts: bit-identical
            if (!targeted.Contains(name))
            {
                Assert.Equal(0.0, Compare.MaxAbsDiff(l0[name].weight, lin.weight));
                continue;
            }
            // W + scale·alpha/r·(B @ A), in float64 from the adapter's stored factors.
            var m = peft.Modules.Single(x => x.Name == name);
            using var expected = l0[name].weight.to(ScalarType.Float64) + 2.0 * m.Up.to(ScalarType.Float64).matmul(m.Down.to(ScalarType.Float64));
            worst = Math.Max(worst, Compare.Close(expected, lin.weight, 1e-6, name));
            Assert.True(Compare.MaxAbsDiff(l0[name].weight, lin.weight) > 1e-3, $"{name} was not changed by the LoRA");
            Assert.Equal(0.0, Compare.MaxAbsDiff(l0[name].bias!, lin.bias!));
        }
        output.WriteLine($"merged weights vs W + 2·B·A (float64): max |Δ| = {worst:E3}");
        // The base weights file was not touched by merging (a fresh load still gives the original weights).
        using var again = Sigma();
        Assert.Equal(0.0, Compare.MaxAbsDiff(Linears(again)["transformer_blocks.0.attn1.to_q"].weight, l0["transformer_blocks.0.attn1.to_q"].weight));
    }

    /// <summary>PEFT's forward rule for one targeted Linear: merged(x) = base(x) + scale·alpha/r·B(A(x)).</summary>
    [Theory]
    [InlineData("transformer_blocks.0.attn1.to_q", 1.0)]
    [InlineData("transformer_blocks.1.ff.net.0.proj", 0.5)]
    [InlineData("transformer_blocks.0.attn2.to_k", -0.75)]
    public void MergedLinearEqualsTheForwardRule(string name, double scale)
    {
        using var peft = LoraAdapter.Load(PeftDir);
        using var basis = Sigma();
        using var merged = Sigma((peft, scale));
        var m = peft.Modules.Single(x => x.Name == name);
        using var g = new Generator(5);
        using var x = torch.randn([2, 7, m.Down.shape[1]], generator: g);
        using var onTheFly = Linears(basis)[name].forward(x) + scale * m.Factor * F.linear(F.linear(x, m.Down), m.Up);
        using var y = Linears(merged)[name].forward(x);
        double err = Compare.Close(onTheFly, y, 1e-5, name);
        output.WriteLine($"{name} × {scale}: merged vs on-the-fly max |Δ| = {err:E3} (max |y| {Compare.MaxAbs(y):F2})");
    }

    /// <summary>
    /// The whole transformer with the adapter merged, teacher-forced on the fixture's first step (the PEFT-rule
    /// reference run): the stored transformer input, prompt embeddings and timestep give the stored output.
    /// </summary>
    [Theory]
    [InlineData("lora_peft_scale1", 1.0, false)]
    [InlineData("lora_scale_half", 0.5, true)]
    public void MergedTransformerMatchesTheReferenceStep(string fixture, double scale, bool kohyaLayout)
    {
        using var r = new Reference($"expected/family/{fixture}");
        Assert.Equal(scale, r.Json.GetProperty("lora").GetProperty("scale").GetDouble());
        using var adapter = LoraAdapter.Load(kohyaLayout ? KohyaFile : PeftDir);
        using var model = Sigma((adapter, scale));
        long t = r.Json.GetProperty("derived").GetProperty("timesteps")[0].GetInt64();
        using var timestep = torch.tensor(new[] { t, t });
        using var outp = model.forward(r["step.0.transformer_input"], r["prompt_embeds"], r["prompt_attention_mask"], timestep);
        double err = Compare.Close(r["step.0.transformer_output"], outp, 1e-5, $"{fixture} step.0.transformer_output");
        output.WriteLine($"{fixture} ({(kohyaLayout ? "kohya" : "peft")}): step.0.transformer_output max |Δ| = {err:E3}");
        // Without the adapter the output is clearly different: the test sees the LoRA.
        using var plain = Sigma();
        using var plainOut = plain.forward(r["step.0.transformer_input"], r["prompt_embeds"], r["prompt_attention_mask"], timestep);
        Assert.True(Compare.MaxAbsDiff(r["step.0.transformer_output"], plainOut) > 1e-3);
    }

    [Fact]
    public void MergesInFloat32ThenCastsToTheComputeDtype()
    {
        using var peft = LoraAdapter.Load(PeftDir);
        using var fp32 = Sigma((peft, 1.0));
        using var bf16 = PixArtTransformer2DModel.FromFolder(SigmaTransformer, dtype: ScalarType.BFloat16, loras: [(peft, 1.0)]);
        var (a, b) = (Linears(fp32), Linears(bf16));
        foreach (var name in TargetedLinears())
        {
            Assert.Equal(ScalarType.BFloat16, b[name].weight.dtype);
            using var expected = a[name].weight.to(ScalarType.BFloat16);
            Assert.Equal(0.0, Compare.MaxAbsDiff(expected, b[name].weight));
        }
    }

    [Fact]
    public void SeveralAdaptersAddUp()
    {
        using var peft = LoraAdapter.Load(PeftDir);
        using var kohya = LoraAdapter.Load(KohyaFile);
        using var once = Sigma((peft, 0.5));
        using var twice = Sigma((peft, 0.25), (kohya, 0.25));
        var (a, b) = (Linears(once), Linears(twice));
        double worst = a.Keys.Max(k => Compare.MaxAbsDiff(a[k].weight, b[k].weight));
        Assert.True(worst <= 1e-6, $"0.5 vs 0.25 + 0.25: {worst:E3}");
    }

    [Fact]
    public void RankAndAlphaPatternsAndRsLoraFollowPeft()
    {
        using var dir = new TempDir();
        string folder = Directory.CreateDirectory(dir.Path("patterned")).FullName;
        File.Copy(Path.Combine(PeftDir, "adapter_model.safetensors"), Path.Combine(folder, "adapter_model.safetensors"));
        File.WriteAllText(Path.Combine(folder, "adapter_config.json"),
            """{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "alpha_pattern": {"to_q": 16, "ff.net.2": 2}, "rank_pattern": {}, "use_rslora": true}""");
        using var a = LoraAdapter.Load(folder);
        Assert.Equal("patterned", a.DisplayName);
        // rsLoRA: alpha/√r; alpha_pattern matches ".*\.to_q$".
        Assert.Equal(16 / 2.0, a.Modules.Single(m => m.Name == "transformer_blocks.1.attn2.to_q").Factor);
        Assert.Equal(2 / 2.0, a.Modules.Single(m => m.Name == "transformer_blocks.0.ff.net.2").Factor);
        Assert.Equal(8 / 2.0, a.Modules.Single(m => m.Name == "transformer_blocks.0.attn1.to_k").Factor);
    }

    // ---- bad adapters: each a LoraFileException (a WeightFileException) naming the file and the problem ----

    private static Dictionary<string, Tensor> Read(string file)
    {
        using var st = SafeTensorsFile.Open(file);
        return st.Tensors.Keys.ToDictionary(k => k, k => { using var v = st.Load(k); return v.clone().DetachFromDisposeScope(); });
    }

    private static string WriteKohya(TempDir dir, Action<Dictionary<string, Tensor>> edit)
    {
        var t = Read(KohyaFile);
        edit(t);
        string path = dir.Path("edited.safetensors");
        SafeTensorsWriter.Write(path, t);
        foreach (var v in t.Values) v.Dispose();
        return path;
    }

    private static string WritePeft(TempDir dir, Action<Dictionary<string, Tensor>> edit, string? config = null)
    {
        string folder = Directory.CreateDirectory(dir.Path("peft-edited")).FullName;
        var t = Read(Path.Combine(PeftDir, "adapter_model.safetensors"));
        edit(t);
        SafeTensorsWriter.Write(Path.Combine(folder, "adapter_model.safetensors"), t);
        foreach (var v in t.Values) v.Dispose();
        File.WriteAllText(Path.Combine(folder, "adapter_config.json"), config ?? File.ReadAllText(Path.Combine(PeftDir, "adapter_config.json")));
        return folder;
    }

    private static LoraFileException Fails(string path, params string[] expected)
    {
        var e = Assert.Throws<LoraFileException>(() =>
        {
            using var a = LoraAdapter.Load(path);
            using var m = Sigma((a, 1.0));
        });
        Assert.IsAssignableFrom<WeightFileException>(e);
        foreach (var s in expected) Assert.Contains(s, e.Message);
        return e;
    }

    private static void Rename(Dictionary<string, Tensor> t, string from, string to)
    {
        foreach (var k in t.Keys.Where(k => k.StartsWith(from, StringComparison.Ordinal)).ToList())
        {
            t[to + k[from.Length..]] = t[k];
            t.Remove(k);
        }
    }

    [Fact]
    public void KeysMatchingNoModuleAreListed()
    {
        using var dir = new TempDir();
        string k = WriteKohya(dir, t => Rename(t, "lora_transformer_transformer_blocks_0_attn1_to_q.", "lora_transformer_transformer_blocks_0_attn1_to_x."));
        Fails(k, k, "1 of its 20 modules match no Linear layer", "lora_transformer_transformer_blocks_0_attn1_to_x", "another model");
        using var dir2 = new TempDir();
        string p = WritePeft(dir2, t => Rename(t, "transformer.transformer_blocks.1.", "transformer.transformer_blocks.7."));
        Fails(p, "10 of its 20 modules match no Linear layer", "transformer_blocks.7.");
    }

    [Fact]
    public void ShapeMismatchSaysAnotherModelSize()
    {
        using var dir = new TempDir();
        string p = WritePeft(dir, t =>
        {
            t["transformer.transformer_blocks.0.attn1.to_v.lora_A.weight"] = torch.zeros(4, 32);
        });
        Fails(p, "adapter_model.safetensors", "'transformer_blocks.0.attn1.to_v' is [24, 24]", "[24, 32]", "another model size");
    }

    [Fact]
    public void MissingAlphaRankOrHalfOfAPairIsNamed()
    {
        using var dir = new TempDir();
        string k = WriteKohya(dir, t => t.Remove("lora_transformer_transformer_blocks_1_ff_net_2.alpha"));
        Fails(k, "'lora_transformer_transformer_blocks_1_ff_net_2.alpha' is missing");

        using var dir2 = new TempDir();
        string up = WriteKohya(dir2, t => t.Remove("lora_transformer_transformer_blocks_0_attn2_to_k.lora_up.weight"));
        Fails(up, "module 'transformer_blocks_0_attn2_to_k' has lora_down but no lora_up");

        using var dir3 = new TempDir();
        string a = WritePeft(dir3, t => t.Remove("transformer.transformer_blocks.0.attn1.to_q.lora_A.weight"));
        Fails(a, "module 'transformer_blocks.0.attn1.to_q' has lora_B but no lora_A");

        using var dir4 = new TempDir();
        string noR = WritePeft(dir4, _ => { }, """{"peft_type": "LORA", "lora_alpha": 8}""");
        Fails(noR, "adapter_config.json", "the rank 'r' is missing");

        using var dir5 = new TempDir();
        string noAlpha = WritePeft(dir5, _ => { }, """{"peft_type": "LORA", "r": 4}""");
        Fails(noAlpha, "'lora_alpha' is missing");

        using var dir6 = new TempDir();
        string wrongR = WritePeft(dir6, _ => { }, """{"peft_type": "LORA", "r": 8, "lora_alpha": 8}""");
        Fails(wrongR, "has rank 4 but", "says r = 8");
    }

    [Fact]
    public void DoraUnknownLayoutsTextEncoderAndCorruptFilesAreRefused()
    {
        using var dir = new TempDir();
        string dora = WritePeft(dir, _ => { }, """{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true}""");
        Fails(dora, "DoRA");

        using var dir2 = new TempDir();
        string doraKohya = WriteKohya(dir2, t => t["lora_transformer_transformer_blocks_0_attn1_to_q.dora_scale"] = torch.ones(1, 24));
        Fails(doraKohya, "DoRA");

        using var dir3 = new TempDir();
        string te = WriteKohya(dir3, t => t["lora_te1_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight"] = torch.zeros(4, 16));
        Fails(te, "text encoder");

        using var dir4 = new TempDir();
        string odd = dir4.Path("odd.safetensors");
        SafeTensorsWriter.Write(odd, new Dictionary<string, Tensor> { ["transformer_blocks.0.attn1.to_q.hada_w1_a"] = torch.zeros(4, 4) });
        Fails(odd, "odd.safetensors", "not a LoRA layout", "LyCORIS");

        using var dir5 = new TempDir();
        byte[] bytes = File.ReadAllBytes(KohyaFile);
        string cut = dir5.Write("cut.safetensors", bytes[..(bytes.Length / 2)]);
        Fails(cut, "cut.safetensors", "cannot be read", "truncated");

        using var dir6 = new TempDir();
        string nan = WriteKohya(dir6, t => t["lora_transformer_transformer_blocks_0_attn1_to_q.lora_up.weight"] = torch.full(24, 4, float.NaN));
        Fails(nan, "NaN");

        Assert.Contains("not found", Assert.Throws<LoraFileException>(() => LoraAdapter.Load(dir6.Path("nope.safetensors"))).Message);
        Assert.Contains("no adapter_model.safetensors", Assert.Throws<LoraFileException>(() => LoraAdapter.Load(dir6.Root)).Message);
    }
}
