using PixArtSharp.Loading;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace PixArtSharp.Models;

// The PixArt transformer's embedding modules (diffusers embeddings.py / normalization.py, v0.29.2): the patch
// embedding with its 2D sin-cos table, the timestep (+ size) embedding behind adaLN-single, and the caption
// projection. Fixed tables are computed in float64 or float32 exactly as upstream does, whatever dtype the
// weights are held in.

/// <summary>Fixed sinusoidal tables (no weights).</summary>
internal static class PixArtEmbeddings
{
    /// <summary>
    /// diffusers <c>get_timestep_embedding</c>: [N] timesteps (any numeric dtype) → [N, dim] float32.
    /// Always float32, as upstream (<c>timesteps[:, None].float()</c>): bf16 could not even represent
    /// timestep 999 or a resolution of 1600 exactly, and the sinusoids of large arguments are ill-conditioned.
    /// </summary>
    public static Tensor TimestepSinusoid(Tensor timesteps, int dim = 256, bool flipSinToCos = true,
                                          double downscaleFreqShift = 0, double scale = 1, double maxPeriod = 10000)
    {
        if (timesteps.dim() != 1)
            throw new ArgumentException($"Timesteps must be 1-D [N]; got shape [{string.Join(", ", timesteps.shape)}].", nameof(timesteps));
        using var scope = NewDisposeScope();
        int half = dim / 2;
        // exponent = -math.log(max_period) * arange(0, half, f32) / (half - shift); emb = exp(exponent)
        var exponent = arange(0, half, ScalarType.Float32, device: timesteps.device).mul(-Math.Log(maxPeriod));
        exponent = exponent.div(half - downscaleFreqShift);
        var freqs = exponent.exp();
        var args = timesteps.to(ScalarType.Float32).unsqueeze(1).mul(freqs.unsqueeze(0));   // [N, half]
        if (scale != 1) args = args.mul(scale);
        var emb = flipSinToCos ? cat([args.cos(), args.sin()], 1) : cat([args.sin(), args.cos()], 1);
        if (dim % 2 == 1) emb = F.pad(emb, [0, 1, 0, 0]);
        return emb.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// diffusers <c>get_2d_sincos_pos_embed(embedDim, (gridH, gridW), base_size, interpolation_scale)</c> as float32
    /// [gridH·gridW, embedDim], tokens in row-major order. As numpy does it: the grid coordinates are float32
    /// (<c>np.arange(n, dtype=float32) / (n / base_size) / interpolation_scale</c>), the frequencies, products,
    /// sin and cos float64, and the result is cast to float32 at the end. The first half of the channels encodes
    /// the column (w) coordinate and the second half the row (h) coordinate (np.meshgrid(grid_w, grid_h)).
    /// </summary>
    public static Tensor SincosPosEmbed2d(long embedDim, long gridH, long gridW, double baseSize, double interpolationScale, Device? device = null)
    {
        if (embedDim <= 0 || embedDim % 4 != 0)
            throw new ArgumentException($"The embedding dimension must be a positive multiple of 4; got {embedDim}.", nameof(embedDim));
        if (gridH <= 0 || gridW <= 0)
            throw new ArgumentException($"The grid must be non-empty; got {gridH}×{gridW}.", nameof(gridH));
        int quarter = (int)(embedDim / 4);
        // omega = 1 / 10000 ** (arange(D/4, f64) / (D/4))
        var omega = new double[quarter];
        for (int d = 0; d < quarter; d++) omega[d] = 1.0 / Math.Pow(10000, d / (embedDim / 4.0));

        // Per-axis tables [n, D/2] = [sin(pos·ω), cos(pos·ω)]; the 2D table is their row/column combination.
        static double[] AxisTable(long n, double baseSize, double interpolationScale, double[] omega)
        {
            int q = omega.Length;
            float step = (float)(n / baseSize), interp = (float)interpolationScale;
            var table = new double[n * 2 * q];
            for (long i = 0; i < n; i++)
            {
                double pos = (float)((float)i / step) / interp;   // float32 arithmetic, like numpy on a float32 grid
                for (int d = 0; d < q; d++)
                {
                    double a = pos * omega[d];
                    table[i * 2 * q + d] = Math.Sin(a);
                    table[i * 2 * q + q + d] = Math.Cos(a);
                }
            }
            return table;
        }
        var rows = AxisTable(gridH, baseSize, interpolationScale, omega);
        var cols = AxisTable(gridW, baseSize, interpolationScale, omega);

        int halfD = 2 * quarter;
        var data = new float[gridH * gridW * embedDim];
        for (long i = 0; i < gridH; i++)
            for (long j = 0; j < gridW; j++)
            {
                long o = (i * gridW + j) * embedDim;
                for (int c = 0; c < halfD; c++)
                {
                    data[o + c] = (float)cols[j * halfD + c];           // emb_h in diffusers' naming: grid[0] is w
                    data[o + halfD + c] = (float)rows[i * halfD + c];
                }
            }
        return tensor(data, [gridH * gridW, embedDim], ScalarType.Float32, device: device);
    }
}

/// <summary>diffusers <c>PatchEmbed</c> (sincos, no layer norm): conv p×p stride p, flatten to tokens, add the 2D table.</summary>
internal sealed class PatchEmbed : IDisposable
{
    public readonly Conv2d proj;
    private readonly long _patch, _embedDim, _inChannels;
    private readonly double _baseSize, _interpolationScale;
    private readonly Dictionary<(long H, long W, string Device), Tensor> _posCache = new();

    public PatchEmbed(Weights w, long inChannels, long embedDim, long patchSize, double baseSize, double interpolationScale)
    {
        proj = new Conv2d(w.Sub("proj"), inChannels, embedDim, patchSize, stride: patchSize);
        _inChannels = inChannels;
        _patch = patchSize;
        _embedDim = embedDim;
        _baseSize = baseSize;
        _interpolationScale = interpolationScale;
    }

    /// <summary>
    /// The float32 [1, h·w, D] table for an h×w token grid, cached per grid size. diffusers recomputes it whenever
    /// the grid differs from sample_size/patch; the stored square table is the same function, so computing it from
    /// (h, w) always is equivalent.
    /// </summary>
    public Tensor PosEmbed(long h, long w, Device device)
    {
        var key = (h, w, device.ToString());
        lock (_posCache)
        {
            if (!_posCache.TryGetValue(key, out var t))
            {
                using var flat = PixArtEmbeddings.SincosPosEmbed2d(_embedDim, h, w, _baseSize, _interpolationScale, device);
                t = flat.unsqueeze(0).DetachFromDisposeScope();
                _posCache[key] = t;
            }
            return t;
        }
    }

    /// <summary>[B, C, H, W] → [B, (H/p)(W/p), D] in the weight dtype.</summary>
    public Tensor forward(Tensor latent)
    {
        using var scope = NewDisposeScope();
        long b = latent.shape[0], h = latent.shape[2] / _patch, w = latent.shape[3] / _patch, p = _patch;
        // proj is a p×p conv with stride p: the patches do not overlap, so it is one matmul over (C, p, p) per
        // token. Written as patchify + linear because libtorch 2.10's CPU bf16 conv2d returns wrong values when
        // the output channels are not a multiple of 16 (measured: 24 and 8 off by O(1); 16, 32, 1152 fine), and
        // it gives the tokens in BNC order directly (conv(latent).flatten(2).transpose(1, 2) upstream).
        var patches = latent.reshape(b, _inChannels, h, p, w, p).permute(0, 2, 4, 1, 3, 5)
                            .reshape(b, h * w, _inChannels * p * p);                   // [B, N, C·p·p]
        // proj.weight viewed as [D, C·p·p] (no copy), taken here so that the module holds only proj's tensors (ModuleTensors.MoveTo).
        var x = F.linear(patches, proj.weight.view(_embedDim, _inChannels * p * p), proj.bias); // [B, N, D]
        var pos = PosEmbed(h, w, x.device);
        // (latent + pos_embed).to(latent.dtype): with reduced-precision weights the sum is taken in float32
        // (type promotion against the float32 table), then rounded once.
        var result = x.dtype == ScalarType.Float32 ? x.add(pos) : x.add(pos).to(x.dtype);
        return result.MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        proj.Dispose();
        lock (_posCache)
        {
            foreach (var t in _posCache.Values) t.Dispose();
            _posCache.Clear();
        }
    }
}

/// <summary>diffusers <c>TimestepEmbedding</c>: linear_1 → SiLU → linear_2.</summary>
internal sealed class TimestepEmbedding : IDisposable
{
    public readonly Linear linear_1;
    public readonly Linear linear_2;

    public TimestepEmbedding(Weights w, long inChannels, long timeEmbedDim)
    {
        linear_1 = new Linear(w.Sub("linear_1"), inChannels, timeEmbedDim);
        linear_2 = new Linear(w.Sub("linear_2"), timeEmbedDim, timeEmbedDim);
    }

    public Tensor forward(Tensor sample)
    {
        using var scope = NewDisposeScope();
        return linear_2.forward(F.silu(linear_1.forward(sample))).MoveToOuterDisposeScope();
    }

    public void Dispose() { linear_1.Dispose(); linear_2.Dispose(); }
}

/// <summary>
/// diffusers <c>PixArtAlphaCombinedTimestepSizeEmbeddings</c>: the timestep embedding, plus (micro-conditioning)
/// embeddings of the resolution (2 values → 2·D/3) and the aspect ratio (→ D/3), concatenated and added.
/// </summary>
internal sealed class PixArtAlphaCombinedTimestepSizeEmbeddings : IDisposable
{
    public const int SinusoidChannels = 256;
    public readonly TimestepEmbedding timestep_embedder;
    public readonly TimestepEmbedding? resolution_embedder;
    public readonly TimestepEmbedding? aspect_ratio_embedder;

    public bool UseAdditionalConditions => resolution_embedder != null;

    public PixArtAlphaCombinedTimestepSizeEmbeddings(Weights w, long embeddingDim, long sizeEmbDim, bool useAdditionalConditions)
    {
        timestep_embedder = new TimestepEmbedding(w.Sub("timestep_embedder"), SinusoidChannels, embeddingDim);
        if (useAdditionalConditions)
        {
            resolution_embedder = new TimestepEmbedding(w.Sub("resolution_embedder"), SinusoidChannels, sizeEmbDim);
            aspect_ratio_embedder = new TimestepEmbedding(w.Sub("aspect_ratio_embedder"), SinusoidChannels, sizeEmbDim);
        }
    }

    /// <param name="timestep">[B]</param>
    /// <param name="resolution">[B, 2] (height, width in pixels), required with micro-conditioning</param>
    /// <param name="aspectRatio">[B, 1] (height / width), required with micro-conditioning</param>
    /// <returns>[B, D] in <paramref name="dtype"/></returns>
    public Tensor forward(Tensor timestep, Tensor? resolution, Tensor? aspectRatio, long batchSize, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        // Sinusoids in float32; only their embedding MLPs run in the weight dtype (timesteps_proj.to(hidden_dtype)).
        var t = timestep_embedder.forward(PixArtEmbeddings.TimestepSinusoid(timestep).to(dtype));   // [B, D]
        if (resolution_embedder != null)
        {
            var res = PixArtEmbeddings.TimestepSinusoid(resolution!.flatten()).to(dtype);      // [2B, 256]
            var resEmb = resolution_embedder.forward(res).reshape(batchSize, -1);               // [B, 2·D/3]
            var ar = PixArtEmbeddings.TimestepSinusoid(aspectRatio!.flatten()).to(dtype);      // [B, 256]
            var arEmb = aspect_ratio_embedder!.forward(ar).reshape(batchSize, -1);             // [B, D/3]
            t = t.add(cat([resEmb, arEmb], 1));
        }
        return t.MoveToOuterDisposeScope();
    }

    public void Dispose() { timestep_embedder.Dispose(); resolution_embedder?.Dispose(); aspect_ratio_embedder?.Dispose(); }
}

/// <summary>
/// diffusers <c>AdaLayerNormSingle</c> (PixArt-α adaLN-single): one timestep embedding shared by every block,
/// turned into 6·D modulation values by <c>linear(silu(emb))</c>.
/// </summary>
internal sealed class AdaLayerNormSingle : IDisposable
{
    public readonly PixArtAlphaCombinedTimestepSizeEmbeddings emb;
    public readonly Linear linear;

    public AdaLayerNormSingle(Weights w, long embeddingDim, bool useAdditionalConditions)
    {
        emb = new PixArtAlphaCombinedTimestepSizeEmbeddings(w.Sub("emb"), embeddingDim, embeddingDim / 3, useAdditionalConditions);
        linear = new Linear(w.Sub("linear"), embeddingDim, 6 * embeddingDim);
    }

    /// <returns>(timestep [B, 6D], embedded_timestep [B, D])</returns>
    public (Tensor Timestep, Tensor EmbeddedTimestep) forward(Tensor timestep, Tensor? resolution, Tensor? aspectRatio, long batchSize, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var embedded = emb.forward(timestep, resolution, aspectRatio, batchSize, dtype);
        var t6 = linear.forward(F.silu(embedded));
        return (t6.MoveToOuterDisposeScope(), embedded.MoveToOuterDisposeScope());
    }

    public void Dispose() { emb.Dispose(); linear.Dispose(); }
}

/// <summary>diffusers <c>PixArtAlphaTextProjection</c>: linear_1 → GELU(tanh) → linear_2, T5 width → model width.</summary>
internal sealed class PixArtAlphaTextProjection : IDisposable
{
    public readonly Linear linear_1;
    public readonly Linear linear_2;

    public PixArtAlphaTextProjection(Weights w, long inFeatures, long hiddenSize)
    {
        linear_1 = new Linear(w.Sub("linear_1"), inFeatures, hiddenSize);
        linear_2 = new Linear(w.Sub("linear_2"), hiddenSize, hiddenSize);
    }

    public Tensor forward(Tensor caption)
    {
        using var scope = NewDisposeScope();
        var h = F.gelu(linear_1.forward(caption), TorchSharp.Modules.GELU.Approximate.tanh);
        return linear_2.forward(h).MoveToOuterDisposeScope();
    }

    public void Dispose() { linear_1.Dispose(); linear_2.Dispose(); }
}
