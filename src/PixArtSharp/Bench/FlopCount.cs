using PixArtSharp.Models;

namespace PixArtSharp.Bench;

/// <summary>
/// Floating-point operation counts of one forward pass, derived from the model configs. A multiply-add counts as
/// 2 FLOPs; only matrix products and convolutions are counted (norms, activations, softmax and the residual adds
/// are a few FLOPs per element, well under 1 % of the total for these models). These are the numerators of the
/// achieved GFLOP/s that <c>pixart bench</c> reports, and — divided by the GEMM rate measured in the same run —
/// the "floor" time each stage is compared with.
/// </summary>
internal static class FlopCount
{
    /// <summary>
    /// PixArt transformer forward for a batch of <paramref name="batch"/> latents of <paramref name="latentHeight"/>
    /// × <paramref name="latentWidth"/>, with <paramref name="captionTokens"/> caption tokens. For N = (h/p)(w/p)
    /// tokens of width D, caption length L, caption width C, per block:
    /// <list type="bullet">
    /// <item>self-attention: q, k, v, out projections 4·2ND², scores QKᵀ 2N²D and weighted values 2N²D;</item>
    /// <item>cross-attention: q and out 2·2ND², k and v over the caption 2·2LD², scores and values 2·2NLD;</item>
    /// <item>feed-forward D → 4D → D: 2·2N·D·4D = 16ND².</item>
    /// </list>
    /// So 28ND² + 4N²D + 4LD² + 4NLD per block; plus the patch embedding (2N·C_in·p²·D), the caption projection
    /// (2L·C·D + 2L·D²), adaLN-single (tiny) and proj_out (2N·D·p²·C_out).
    /// 1024 px (N = 4096, D = 1152, 28 blocks, L = 120): ≈ 6.5 TFLOP per image.
    /// </summary>
    public static double TransformerForward(PixArtTransformerConfig c, long latentHeight, long latentWidth, long batch = 1, long captionTokens = 120)
    {
        double p = c.PatchSize!.Value;
        double n = latentHeight / p * (latentWidth / p);
        double d = c.InnerDim, l = captionTokens, cap = c.CaptionChannels!.Value;
        double perBlock = 28 * n * d * d + 4 * n * n * d + 4 * l * d * d + 4 * n * l * d;
        double patch = 2 * n * c.InChannels!.Value * p * p * d;
        double caption = 2 * l * cap * d + 2 * l * d * d;
        double adaln = 2 * 256 * d + 2 * d * d + 2 * d * 6 * d;   // timestep MLP and the 6D modulation: negligible
        double output = 2 * n * d * p * p * c.OutChannelsResolved;
        return batch * (c.NumLayers * perBlock + patch + caption + adaln + output);
    }

    /// <summary>
    /// T5 encoder at L tokens: per layer the q, k, v, o projections 4·2·L·d_model·inner (inner = heads·d_kv),
    /// scores and weighted values 2·2·L²·inner, and the gated feed-forward (wi_0, wi_1, wo) 3·2·L·d_model·d_ff.
    /// T5-XXL (24 layers, d_model 4096, inner 4096, d_ff 10240) at 120 tokens: ≈ 1.1 TFLOP per prompt.
    /// </summary>
    public static double T5Encoder(T5Config c, long tokens = 120, long batch = 1)
    {
        double l = tokens, d = c.DModel, inner = c.InnerDim, ff = c.DFf;
        double ffMatrices = c.IsGatedActResolved ? 3 : 2;
        double perLayer = 8 * l * d * inner + 4 * l * l * inner + ffMatrices * 2 * l * d * ff;
        return batch * c.NumLayers * perLayer;
    }

    /// <summary>
    /// VAE decode of one latent of <paramref name="latentHeight"/> × <paramref name="latentWidth"/>, walking the
    /// decoder as diffusers builds it: post_quant_conv (1×1), conv_in (3×3), the mid block (two ResnetBlock2D and
    /// single-head attention over H·W positions: 4·2·HW·C² projections + 2·2·(HW)²·C), the up blocks (each
    /// layers_per_block + 1 resnets, a 1×1 conv_shortcut where channels change, then a 3×3 conv after a 2×
    /// nearest upsample except in the last block), conv_out. A k×k conv from Cin to Cout on an H×W output costs
    /// 2·Cin·Cout·k²·H·W. SD VAE at 1024 px (128×128 latents): ≈ 10.6 TFLOP, 60 % of it in the last two
    /// (512² and 1024²) up blocks.
    /// </summary>
    public static double VaeDecode(AutoencoderKLConfig c, long latentHeight, long latentWidth, long batch = 1)
    {
        static double Conv(double cin, double cout, double k, double hw) => 2 * cin * cout * k * k * hw;
        double hw = (double)latentHeight * latentWidth;
        int[] ch = c.BlockOutChannels;
        double lat = c.LatentChannels;
        double total = 0;
        if (c.UsePostQuantConv) total += Conv(lat, lat, 1, hw);
        double cur = ch[^1];
        total += Conv(lat, cur, 3, hw);                                                    // conv_in
        // mid block: resnet, attention, resnet
        total += 2 * 2 * Conv(cur, cur, 3, hw);
        if (c.MidBlockAddAttention) total += 4 * 2 * hw * cur * cur + 2 * 2 * hw * hw * cur;
        // up blocks over reversed channels
        for (int i = 0; i < ch.Length; i++)
        {
            double outCh = ch[ch.Length - 1 - i];
            for (int r = 0; r < c.LayersPerBlock + 1; r++)
            {
                double inCh = r == 0 ? cur : outCh;
                total += Conv(inCh, outCh, 3, hw) + Conv(outCh, outCh, 3, hw);
                if (inCh != outCh) total += Conv(inCh, outCh, 1, hw);                    // conv_shortcut
            }
            cur = outCh;
            if (i < ch.Length - 1)
            {
                hw *= 4;                                                                 // 2× nearest upsample
                total += Conv(cur, cur, 3, hw);                                          // upsamplers.0.conv
            }
        }
        total += Conv(cur, c.OutChannels, 3, hw);                                         // conv_out
        return batch * total;
    }
}
