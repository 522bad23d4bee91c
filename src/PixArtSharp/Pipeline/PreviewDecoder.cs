using NetVips;
using PixArtSharp.Hub;
using PixArtSharp.Models;
using static TorchSharp.torch;
using VImage = NetVips.Image;

namespace PixArtSharp.Pipeline;

/// <summary>The image format of a preview frame.</summary>
public enum PreviewFormat
{
    /// <summary>JPEG (<c>image/jpeg</c>), the default: small and fast to encode.</summary>
    Jpeg,
    /// <summary>WebP (<c>image/webp</c>).</summary>
    WebP,
}

/// <summary>
/// Live previews: a TAESD (<see cref="AutoencoderTiny"/>) that turns a step's predicted clean latents
/// (<see cref="StepInfo.Denoised"/>) into a small JPEG or WebP frame. TAESD decodes the latents the transformer sees
/// (its scaling_factor is 1.0): madebyollin/taesd for the SD VAE's latents (PixArt-α, LCM), madebyollin/taesdxl for
/// the SDXL VAE's (PixArt-Σ). Latents larger than the frame are averaged down first (a 1024px image's 128×128 latents
/// → 64×64 for a 512px frame), which costs a quarter of a full decode — a preview is a glimpse, not the image.
/// The decoder only reads the latents it is given, so previews never change the final image.
/// </summary>
public sealed class PreviewDecoder : IDisposable
{
    /// <summary>TAESD for SD-VAE latents (PixArt-α and PixArt-LCM).</summary>
    public const string AlphaRepo = "madebyollin/taesd";
    /// <summary>TAESD for SDXL-VAE latents (PixArt-Σ).</summary>
    public const string SigmaRepo = "madebyollin/taesdxl";
    /// <summary>The longest side of a frame unless told otherwise.</summary>
    public const int DefaultMaxSide = 512;

    private readonly AutoencoderTiny _taesd;
    private readonly object _gate = new();

    /// <summary>The folder the TAESD was loaded from.</summary>
    public string Folder { get; }
    /// <summary>Frame format (JPEG unless told otherwise).</summary>
    public PreviewFormat Format { get; init; } = PreviewFormat.Jpeg;
    /// <summary>JPEG/WebP quality, 1–100.</summary>
    public int Quality { get; init; } = 70;
    /// <summary>The MIME type of the frames.</summary>
    public string MimeType => Format == PreviewFormat.WebP ? "image/webp" : "image/jpeg";

    internal PreviewDecoder(AutoencoderTiny taesd, string folder)
    {
        ArgumentNullException.ThrowIfNull(taesd);
        _taesd = taesd;
        Folder = folder;
    }

    /// <summary>Loads a TAESD folder (config.json + diffusion_pytorch_model.safetensors, as the Hub repos have it).</summary>
    public static PreviewDecoder Load(string folder, ScalarType dtype = ScalarType.Float32, Device? device = null, PreviewFormat format = PreviewFormat.Jpeg) =>
        new(AutoencoderTiny.FromFolder(folder, null, dtype, device), Path.GetFullPath(folder)) { Format = format };

    /// <summary>The TAESD repo whose latents match <paramref name="pipeline"/>'s VAE.</summary>
    public static string RepoFor(PixArtPipeline pipeline) => pipeline is PixArtSigmaPipeline ? SigmaRepo : AlphaRepo;

    /// <summary>
    /// The cached snapshot of a TAESD repo (main) in the Hugging Face cache when it holds config.json and the weights;
    /// null otherwise. Never downloads.
    /// </summary>
    public static string? FindCached(string repoId, string? cacheDir = null)
    {
        var cache = new HubCache(cacheDir ?? HubSettings.FromEnvironment().CacheDir);
        if (cache.ResolveCommit(repoId, "main") is not { } commit) return null;
        string snapshot = cache.SnapshotFolder(repoId, commit);
        return File.Exists(Path.Combine(snapshot, "config.json")) && File.Exists(Path.Combine(snapshot, AutoencoderTiny.WeightStem + ".safetensors"))
            ? snapshot : null;
    }

    /// <summary>
    /// One frame from a step's predicted clean latents (B, 4, h, w): the first image of the batch, at most
    /// <paramref name="maxSide"/> pixels on its longest side, encoded as <see cref="Format"/>.
    /// </summary>
    public byte[] Encode(Tensor denoisedLatents, int maxSide = DefaultMaxSide, PreviewFormat? format = null)
    {
        ArgumentNullException.ThrowIfNull(denoisedLatents);
        if (denoisedLatents.dim() != 4 || denoisedLatents.shape[1] != _taesd.LatentChannels)
            throw new ArgumentException($"Preview latents must be (B, {_taesd.LatentChannels}, h, w), not [{string.Join(", ", denoisedLatents.shape)}].", nameof(denoisedLatents));
        if (maxSide < 8) throw new ArgumentOutOfRangeException(nameof(maxSide), maxSide, "A preview frame is at least 8 pixels on its longest side.");
        byte[] rgb;
        int width, height;
        lock (_gate)
            using (no_grad())
            using (var scope = NewDisposeScope())
            {
                // 1. The first image: (1, 4, h, w), averaged down so the decode is about maxSide on its longest side.
                var z = denoisedLatents[0..1].to(ScalarType.Float32, _taesd.Device);
                long h = z.shape[2], w = z.shape[3];
                int f = _taesd.VaeScaleFactor;
                double shrink = (double)maxSide / (Math.Max(h, w) * f);
                if (shrink < 1)   // area averaging (adaptive pooling), to the latent size of a maxSide frame
                    z = nn.functional.adaptive_avg_pool2d(z, [Math.Max(1, (long)Math.Round(h * shrink)), Math.Max(1, (long)Math.Round(w * shrink))]);
                // 2. TAESD: (1, 4, h', w') → (1, 3, f·h', f·w') in [−1, 1]; then 8-bit RGB as the pipeline rounds it.
                var image = _taesd.Decode(z);
                var bytes = image.div(2).add(0.5).clamp(0, 1).mul(255).round().to(ScalarType.Byte).permute(0, 2, 3, 1).contiguous().cpu();
                height = (int)bytes.shape[1];
                width = (int)bytes.shape[2];
                rgb = bytes.data<byte>().ToArray();
            }
        // 3. Encode (libvips); a frame still larger than maxSide is scaled down.
        if (!ModuleInitializer.VipsInitialized)
            throw new InvalidOperationException("libvips could not be loaded (the NetVips.Native package provides it): " + ModuleInitializer.Exception?.Message);
        using var frame = VImage.NewFromMemory(rgb, width, height, 3, Enums.BandFormat.Uchar);
        double scale = Math.Min(1.0, (double)maxSide / Math.Max(width, height));
        using var sized = scale < 1 ? frame.Resize(scale) : frame.Copy();
        return (format ?? Format) == PreviewFormat.WebP ? sized.WebpsaveBuffer(q: Quality) : sized.JpegsaveBuffer(q: Quality);
    }

    /// <summary>A JPEG frame (see <see cref="Encode"/>), whatever <see cref="Format"/> says.</summary>
    public byte[] Jpeg(Tensor denoisedLatents, int maxSide = DefaultMaxSide) =>
        Encode(denoisedLatents, maxSide, PreviewFormat.Jpeg);

    /// <summary>The frame as a data: URL (what the server's progress events carry).</summary>
    public string DataUrl(Tensor denoisedLatents, int maxSide = DefaultMaxSide) =>
        $"data:{MimeType};base64,{Convert.ToBase64String(Encode(denoisedLatents, maxSide))}";

    /// <summary>Frees the TAESD weights.</summary>
    public void Dispose() => _taesd.Dispose();
}
