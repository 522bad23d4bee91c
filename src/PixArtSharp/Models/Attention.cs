using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Models;

/// <summary>
/// The one place attention is computed — PixArt's self- and cross-attention and the VAE's mid-block attention:
/// softmax(q·kᵀ/√d + mask)·v over [B, heads, N, d] queries and [B, heads, L, d] keys/values.
/// <para>
/// Every dtype and device runs libtorch's <c>scaled_dot_product_attention</c>, exactly as diffusers'
/// AttnProcessor2_0 does (the fp32 mode is bit-identical to calling it directly). On the CPU in bf16 it is
/// libtorch's flash-attention kernel: query blocks of 256 × key blocks of 512, bf16×bf16 products accumulated in fp32
/// (oneDNN brgemm, AMX where the CPU has it), an fp32 online softmax, bf16 probabilities — so neither the 4096×4096
/// scores nor a rounded-to-bf16 score ever exist.
/// </para>
/// <para>
/// Routes measured against it and not adopted (docs/attention.md, tools/AttentionBench): explicit bf16/fp32 score
/// matmuls blocked over query rows with a libtorch softmax (3–15× its CPU time; bf16-rounded scores also 10× its
/// error), and an AMX-blocked route with a fused C# softmax calling libtorch's exported oneDNN micro-kernels (the same
/// CPU time for the 1024 px self-attention, (1, 16, 4096, 72): 0.217 vs 0.227 s; twice it for the VAE's
/// 16384 × 512 attention). A faster route belongs here, behind the same signature.
/// </para>
/// </summary>
internal static class Attention
{
    /// <param name="q">[B, heads, N, d]</param>
    /// <param name="k">[B, heads, L, d]</param>
    /// <param name="v">[B, heads, L, d]</param>
    /// <param name="mask">additive bias broadcastable to [B, heads, N, L], or null</param>
    /// <returns>[B, heads, N, d] in q's dtype and device; the scale is 1/√d (SDPA's default, diffusers' scale).</returns>
    public static Tensor Forward(Tensor q, Tensor k, Tensor v, Tensor? mask = null)
    {
        if (q.ndim != 4 || k.ndim != 4 || v.ndim != 4)
            throw new ArgumentException($"Attention.Forward takes [B, heads, tokens, head_dim] tensors; got q {Shape(q)}, k {Shape(k)}, v {Shape(v)}.");
        if (k.shape[3] != q.shape[3] || v.shape[2] != k.shape[2])
            throw new ArgumentException($"Attention.Forward: q and k need the same head_dim and k and v the same token count; got q {Shape(q)}, k {Shape(k)}, v {Shape(v)}.");
        return F.scaled_dot_product_attention(q, k, v, mask);
    }

    private static string Shape(Tensor t) => "[" + string.Join(", ", t.shape) + "]";
}
