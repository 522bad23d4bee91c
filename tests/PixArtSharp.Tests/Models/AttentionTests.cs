using PixArtSharp.Models;
using Xunit.Abstractions;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Tests.Models;

/// <summary>
/// <see cref="Attention.Forward"/>: the fp32 mode must be libtorch's SDPA bit for bit (diffusers' AttnProcessor2_0),
/// and the bf16 mode must be as accurate as bf16 storage allows (docs/attention.md).
/// </summary>
public class AttentionTests(ITestOutputHelper output)
{
    /// <summary>bf16 unit roundoff: 8 significand bits, so rounding moves a value by at most 2⁻⁸ of itself.</summary>
    private const double U = 1.0 / 256;

    /// <summary>q, k, v of a self-attention: logits q·k/√d of std ≈ 6 as in the real model (README), v ~ N(0, 1).</summary>
    private static (Tensor Q, Tensor K, Tensor V) Inputs(ScalarType dtype, long heads, long tokens, long headDim, int seed)
    {
        var g = new Generator((ulong)seed);
        double sigma = Math.Pow(36.0, 0.25);   // (q·k)/√d has variance σ⁴ for q, k ~ N(0, σ²)
        var q = (randn([1, heads, tokens, headDim], generator: g) * sigma).to(dtype);
        var k = (randn([1, heads, tokens, headDim], generator: g) * sigma).to(dtype);
        var v = randn([1, heads, tokens, headDim], generator: g).to(dtype);
        return (q, k, v);
    }

    [Fact]
    public void Fp32IsSdpaBitForBit()
    {
        using var scope = NewDisposeScope();
        var (q, k, v) = Inputs(ScalarType.Float32, 2, 64, 12, 3);
        Assert.True(Attention.Forward(q, k, v).eq(F.scaled_dot_product_attention(q, k, v)).all().item<bool>(), "unmasked");
        // A cross-attention's caption bias [B, 1, 1, L]: 0 for kept tokens, −10000 for padding (as the pipeline builds it).
        var bias = zeros(1, 1, 1, 64);
        bias[.., .., .., 40..] = tensor(-10000f);
        Assert.True(Attention.Forward(q, k, v, bias).eq(F.scaled_dot_product_attention(q, k, v, bias)).all().item<bool>(), "masked");
    }

    /// <summary>
    /// bf16 against an fp64 attention of the same bf16 values. Where the error can come from: the scores are
    /// bf16×bf16 products accumulated in fp32 (relative error ~1e-6, negligible); each probability is rounded to bf16
    /// (≤ U relative, so ≤ U·Σⱼ pⱼ|vⱼ| ≤ U·max|v| on an output); the normalisation (fp32); the output's own rounding to
    /// bf16 (≤ U·|o|). Bound per element: U·(|o| + 2·max|v|), the 2 leaving room for the sum's own rounding.
    /// The mean error is bounded too (measured 7.4e-4 at 4096 keys, 16 heads; bound 2e-3): a route that rounds the
    /// scores to bf16 before the softmax — the rejected explicit-matmul route — has a mean error near 7e-3 and fails it
    /// (checked below, so this test can tell the two apart).
    /// </summary>
    [Fact]
    public void Bf16StaysWithinBf16RoundingOfFp64()
    {
        using var scope = NewDisposeScope();
        var (q, k, v) = Inputs(ScalarType.BFloat16, 4, 1024, 72, 11);
        var expected = Fp64Attention(q, k, v);
        var vMax = v.abs().max().to(ScalarType.Float64);
        var bound = expected.abs().add(vMax * 2).mul(U);

        var o = Attention.Forward(q, k, v);
        Assert.Equal(ScalarType.BFloat16, o.dtype);
        var err = (o.to(ScalarType.Float64) - expected).abs();
        double max = err.max().item<double>(), mean = err.mean().item<double>();
        double worstRatio = (err / bound).max().item<double>();
        output.WriteLine($"bf16 Attention.Forward vs fp64: max |Δ| {max:E2}, mean |Δ| {mean:E2}, max |Δ|/bound {worstRatio:F2} (max |v| {vMax.item<double>():F2})");
        Assert.True(worstRatio <= 1, $"bf16 attention differs from fp64 by more than bf16 rounding allows: max |Δ|/bound = {worstRatio:F2}");
        Assert.True(mean <= 2e-3, $"bf16 attention mean |Δ| {mean:E2} > 2e-3");

        // The same inputs through bf16-rounded scores (q·kᵀ as a bf16 matmul, softmax in fp32, bf16 probabilities).
        var scores = q.mul(1 / Math.Sqrt(72)).matmul(k.transpose(-1, -2));   // bf16 result
        var rounded = F.softmax(scores.to(ScalarType.Float32), -1).to(ScalarType.BFloat16).matmul(v);
        var errRounded = (rounded.to(ScalarType.Float64) - expected).abs();
        output.WriteLine($"bf16-rounded scores vs fp64: max |Δ| {errRounded.max().item<double>():E2}, mean |Δ| {errRounded.mean().item<double>():E2}");
        Assert.True(errRounded.mean().item<double>() > 2e-3, "the mean bound cannot tell bf16-rounded scores from fp32 ones");
    }

    [Fact]
    public void BadShapesNameTheTensors()
    {
        using var scope = NewDisposeScope();
        var q = zeros(1, 2, 8, 4);
        var e = Assert.Throws<ArgumentException>(() => Attention.Forward(q.view(2, 8, 4), q, q));
        Assert.Contains("[B, heads, tokens, head_dim]", e.Message);
        Assert.Contains("q [2, 8, 4]", e.Message);
        var e2 = Assert.Throws<ArgumentException>(() => Attention.Forward(q, zeros(1, 2, 8, 6), zeros(1, 2, 8, 6)));
        Assert.Contains("same head_dim", e2.Message);
    }

    private static Tensor Fp64Attention(Tensor q, Tensor k, Tensor v)
    {
        var q64 = q.to(ScalarType.Float64);
        var s = q64.matmul(k.to(ScalarType.Float64).transpose(-1, -2)).div(Math.Sqrt(q.shape[3]));
        return F.softmax(s, -1).matmul(v.to(ScalarType.Float64));
    }
}
