using PixArtSharp.Cli.Download;
using PixArtSharp.Hub;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;
using static TorchSharp.torch;

namespace PixArtSharp.Cli;

/// <summary>
/// <c>--preview tiny|none</c> and <c>--preview-vae ID|DIR</c>, shared by <c>pixart generate</c> and <c>pixart serve</c>:
/// which TAESD decodes the live previews. "tiny" takes <c>--preview-vae</c>, or the TAESD that matches the model when
/// it is in the Hugging Face cache (madebyollin/taesd for PixArt-α/LCM, madebyollin/taesdxl for PixArt-Σ) — a preview
/// never downloads on its own. Not given: previews are on when <c>--preview-vae</c> (or, for generate,
/// <c>--preview-file</c>) is given.
/// </summary>
public static class PreviewSetup
{
    public static readonly string[] Modes = ["tiny", "none"];

    /// <summary>Whether the flags ask for previews (before any model work, so a mistake costs nothing).</summary>
    public static bool Wanted(string? mode, string? previewVae, string? previewFile = null)
    {
        switch (mode?.Trim().ToLowerInvariant())
        {
            case null: return previewVae is not null || previewFile is not null;
            case "tiny": return true;
            case "none":
                if (previewVae is not null || previewFile is not null)
                    throw new UsageException($"--preview none turns previews off, but {(previewVae is not null ? "--preview-vae" : "--preview-file")} was given: drop one of them.");
                return false;
            default: throw new UsageException($"--preview must be tiny or none, got '{mode}'.");
        }
    }

    /// <summary>The preview decoder for <paramref name="pipeline"/>, or null when previews are off.</summary>
    public static async Task<PreviewDecoder?> CreateAsync(CliOutput cli, bool quiet, string? mode, string? previewVae, string? previewFile,
                                                         PixArtPipeline pipeline, CancellationToken ct)
    {
        if (!Wanted(mode, previewVae, previewFile)) return null;
        string repo = PreviewDecoder.RepoFor(pipeline);
        string? folder;
        if (previewVae is null)
        {
            folder = PreviewDecoder.FindCached(repo)
                ?? throw new UsageException($"--preview tiny needs a TAESD and {repo} is not in the Hugging Face cache: give --preview-vae {repo} " +
                                            "(downloaded into the cache once) or --preview-vae DIR (a folder with config.json and diffusion_pytorch_model.safetensors).");
        }
        else if (Directory.Exists(previewVae)) folder = previewVae;
        else
        {
            folder = PreviewDecoder.FindCached(previewVae) ?? await DownloadView.RunAsync(cli, quiet, progress =>
                ModelLocator.ResolveComponentAsync(previewVae, "vae", null, null, progress, HubSettings.FromEnvironment(), ct)).ConfigureAwait(false);
        }
        // The pipeline's dtype: bf16 halves the decode's time on CPUs with AVX-512-BF16, and a preview need not be exact.
        var format = previewFile is not null && previewFile.EndsWith(".webp", StringComparison.OrdinalIgnoreCase) ? PreviewFormat.WebP : PreviewFormat.Jpeg;
        return PreviewDecoder.Load(folder, pipeline.Options.DType, pipeline.Device, format);
    }

    /// <summary>Where <c>pixart generate --preview tiny</c> writes its frames without --preview-file: beside the first image, &lt;stem&gt;.preview.jpg.</summary>
    public static string DefaultFile(string firstOutput) => Path.ChangeExtension(firstOutput, ".preview.jpg");

    /// <summary>
    /// The step callback's part for <c>--preview-file</c>: each step's frame, written atomically (a viewer that
    /// reloads the file never sees half a frame).
    /// </summary>
    public static void WriteFrame(PreviewDecoder decoder, StepInfo step, string path)
    {
        if (step.Denoised is not { } denoised) return;
        PngWriter.WriteBytes(path, decoder.Encode(denoised));
    }
}
