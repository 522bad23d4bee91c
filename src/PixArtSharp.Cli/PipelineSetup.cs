using PixArtSharp.Cli.Download;
using PixArtSharp.Hub;
using PixArtSharp.Imaging;
using PixArtSharp.Loading;
using PixArtSharp.Loading.Lora;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Cli;

/// <summary>
/// The model side of a command, shared by <c>pixart generate</c> and <c>pixart serve</c>: the model folder (local or
/// through the Hub cache), components from elsewhere (<c>--text-encoder</c>, <c>--transformer</c>, <c>--vae</c>), LoRA
/// adapters (<c>--lora PATH[:SCALE]</c>) — turned into the pipeline's options and the record every image carries.
/// </summary>
public static class PipelineSetup
{
    /// <summary>Resolves (downloading what is missing) and returns the folder, the pipeline options and the image record.</summary>
    public static async Task<(string Folder, PipelineOptions Options, ModelInfo Model)> ResolveAsync(
        CliOutput cli, bool quiet, ModelInfo model, PipelineOptions options, IReadOnlyList<string> loraArgs, CancellationToken ct)
    {
        var hub = HubSettings.FromEnvironment();
        string folder = await DownloadView.RunAsync(cli, quiet, progress =>
            ModelLocator.ResolveAsync(model.Model, model.ModelRevision, model.Variant, progress, hub, ct)).ConfigureAwait(false);
        bool isLocal = Directory.Exists(model.Model);
        model = model with
        {
            // As the user named it (never made absolute): the image records what the user typed, not this machine's layout.
            Model = model.Model,
            // The snapshot folder is named after the commit: record that, not "main", so --from-png gets the same files.
            ModelRevision = isLocal ? null : Path.GetFileName(Path.TrimEndingDirectorySeparator(folder)),
        };
        async Task<string?> Component(string? arg, string name) => arg is null ? null : await DownloadView.RunAsync(cli, quiet, progress =>
            ModelLocator.ResolveComponentAsync(arg, name, null, model.Variant, progress, hub, ct)).ConfigureAwait(false);
        var loras = loraArgs.Select(ParseLora).ToList();
        options = options with
        {
            Variant = model.Variant,
            TextEncoder = await Component(model.TextEncoder, "text_encoder").ConfigureAwait(false),
            Transformer = await Component(model.Transformer, "transformer").ConfigureAwait(false),
            Vae = await Component(model.Vae, "vae").ConfigureAwait(false),
            Loras = loras,
        };
        if (options.TextEncoder is { } te && File.Exists(te))
            // A single file (GGUF): recorded by name and a short hash of its first 4 MiB (header and tensor table).
            model = model with { TextEncoder = $"{Path.GetFileName(te)} ({ShortHash(te)})" };
        if (loras.Count > 0)
        {
            // Each adapter is recorded by name, a short hash of its weights and its scale (never its path).
            var adapters = LoraAdapter.LoadAll(loras);
            try { model = model with { Loras = adapters.Select(x => x.Adapter.Describe(x.Scale)).ToList() }; }
            finally { foreach (var (adapter, _) in adapters) adapter.Dispose(); }
        }
        return (folder, options, model);
    }

    /// <summary>The first 12 hex digits of the sha256 of a file's first 4 MiB.</summary>
    public static string ShortHash(string path)
    {
        using var f = File.OpenRead(path);
        var buffer = new byte[(int)Math.Min(f.Length, 4 << 20)];
        f.ReadExactly(buffer);
        return Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(buffer))[..12];
    }

    /// <summary>The most --threads accepted: 4 per core (libtorch gains nothing past one per core; 100000 exhausts the process table).</summary>
    public static int MaxThreads => 4 * Environment.ProcessorCount;

    /// <summary>--threads in 1..<see cref="MaxThreads"/>, checked before any model work (exit 2 / a one-line error).</summary>
    public static void CheckThreads(int? threads)
    {
        if (threads is { } n && (n < 1 || n > MaxThreads))
            throw new UsageException($"--threads must be between 1 and {MaxThreads} (4 per core on this machine), got {n}.");
    }

    /// <summary>
    /// <see cref="PixArtPipeline.FromPretrained"/> (configs and the tokenizer), with a tokenizer that cannot be read
    /// named: a corrupt or truncated spiece.model is a <see cref="WeightFileException"/> (exit 4) naming the file.
    /// </summary>
    public static PixArtPipeline Open(string folder, PipelineOptions options)
    {
        try
        {
            return PixArtPipeline.FromPretrained(folder, options);
        }
        catch (Exception e) when (e is not (WeightFileException or ModelNotFoundException or NotSupportedException or OperationCanceledException
                                             or UnauthorizedAccessException or FileNotFoundException or DirectoryNotFoundException)
                                  && !CliApp.IsOutOfMemory(e))
        {
            // Configs name their own file and key; anything else thrown here (a NullReference or an index out of
            // range from a truncated spiece.model, …) is the tokenizer's when it cannot be loaded on its own.
            string spiece = Path.Combine(folder, "tokenizer", "spiece.model");
            if (e is InvalidDataException or EndOfStreamException || !TokenizerLoads(folder))
                throw new WeightFileException($"{spiece}: the tokenizer cannot be read ({e.Message.TrimEnd('.')}). Download the model again (or copy tokenizer/ from the original).", e);
            throw;
        }
    }

    private static bool TokenizerLoads(string folder)
    {
        try { PixArtSharp.Text.T5Tokenizer.FromModelFolder(Path.Combine(folder, "tokenizer")); return true; }
        catch (Exception) { return false; }
    }

    /// <summary>The --warmup option of serve and worker: auto (on CUDA only), on or off.</summary>
    public static System.CommandLine.Option<string> WarmUpOption()
    {
        var o = new System.CommandLine.Option<string>("--warmup")
        {
            Description = "One throw-away generation at the default size after loading, so the first request does not pay the GPU's start-up (auto: on CUDA only)",
            DefaultValueFactory = _ => "auto",
        };
        o.AcceptOnlyFromAmong("auto", "on", "off");
        return o;
    }

    /// <summary>Runs <see cref="PixArtPipeline.WarmUp"/> when <paramref name="mode"/> asks for it and says how long it took.</summary>
    public static void WarmUpIfAsked(PixArtPipeline pipeline, string mode, TextWriter err, string who)
    {
        if (mode == "on" || (mode == "auto" && pipeline.Device.type == TorchSharp.DeviceType.CUDA))
            err.WriteLine($"{who}: warmed up in {pipeline.WarmUp().TotalSeconds:0.00} s (one generation at the default size)");
    }

    /// <summary>--lora PATH[:SCALE] → a LoRA spec (a trailing ":number" is the scale; paths may hold ':' otherwise).</summary>
    public static LoraSpec ParseLora(string text)
    {
        int colon = text.LastIndexOf(':');
        if (colon > 0 && double.TryParse(text[(colon + 1)..], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double scale))
        {
            if (!double.IsFinite(scale)) throw new UsageException($"--lora {text}: the scale must be a finite number.");
            return new LoraSpec(text[..colon], scale);
        }
        return new LoraSpec(text, 1.0);
    }
}
