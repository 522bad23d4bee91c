using System.Text.Json.Serialization;
using PixArtSharp.Loading;
using PixArtSharp.Loading.Lora;
using PixArtSharp.Models;
using PixArtSharp.Schedulers;
using PixArtSharp.Text;
using static TorchSharp.torch;

namespace PixArtSharp.Pipeline;

/// <summary>
/// The parts a pipeline is built from, as diffusers' <c>__init__(tokenizer, text_encoder, vae, transformer,
/// scheduler)</c> takes them: what must be known up front (the tokenizer, the transformer's config, the VAE's scale
/// factors, how to make a scheduler) and how to make each model when its stage first needs it. Made from a model
/// folder (with optional components from elsewhere, <see cref="PipelineOptions.TextEncoder"/> …), or by hand (the
/// bench's seeded random weights).
/// </summary>
internal sealed class PipelineComponents
{
    /// <summary>The model folder, when the components come from one.</summary>
    public ModelFolder? Folder { get; init; }
    /// <summary>The T5 tokenizer, or null for a pipeline that only takes prompt embeddings.</summary>
    public T5Tokenizer? Tokenizer { get; init; }
    /// <summary>The transformer's config.</summary>
    public required PixArtTransformerConfig TransformerConfig { get; init; }
    /// <summary>2^(len(block_out_channels) − 1) of the VAE's config.</summary>
    public required int VaeScaleFactor { get; init; }
    /// <summary>The VAE config's <c>scaling_factor</c>.</summary>
    public required double VaeScalingFactor { get; init; }
    /// <summary>Makes the T5 encoder.</summary>
    public required Func<T5EncoderModel> LoadTextEncoder { get; init; }
    /// <summary>Makes the transformer.</summary>
    public required Func<PixArtTransformer2DModel> LoadTransformer { get; init; }
    /// <summary>Makes the VAE.</summary>
    public required Func<IVae> LoadVae { get; init; }
    /// <summary>Makes a fresh scheduler: the model's (null) or the one named ("lcm", "dpm-solver", "sa-solver", "ddpm").</summary>
    public required Func<string?, IScheduler> CreateScheduler { get; init; }
    /// <summary>Load-time remarks for the user (e.g. a component without the requested variant).</summary>
    public IReadOnlyList<string> Warnings { get; init; } = [];

    /// <summary>
    /// The components of a diffusers folder, each from its sub-folder unless <paramref name="options"/> names one from
    /// elsewhere. Reads configs and the tokenizer now; the models load when asked.
    /// </summary>
    public static PipelineComponents FromFolder(ModelFolder folder, PipelineOptions options)
    {
        ArgumentNullException.ThrowIfNull(folder);
        ArgumentNullException.ThrowIfNull(options);
        // With CPU offload the big components load into CPU memory and move to the device for their stage; TAESD is
        // small and loads on the device.
        var device = new OffloadPolicy(options.Offload, options.Device ?? CPU).LoadDevice;
        var executionDevice = options.Device ?? CPU;
        var load = options.CopyWeights ? WeightLoadOptions.Copied : WeightLoadOptions.Default;
        // A GGUF file (ComfyUI-GGUF's T5 encoders) stays quantized and is decoded layer by layer when it runs.
        string? gguf = options.TextEncoder is { } te && File.Exists(te) && te.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase) ? Path.GetFullPath(te) : null;
        string textEncoderDir = gguf ?? ComponentDir(folder, "text_encoder", options.TextEncoder);
        string transformerDir = ComponentDir(folder, "transformer", options.Transformer);
        string vaeDir = ComponentDir(folder, "vae", options.Vae);
        var transformerConfig = PixArtTransformerConfig.Load(Path.Combine(transformerDir, "config.json"));
        var vae = VaeConfigHead.Load(Path.Combine(vaeDir, "config.json"));
        // The text encoder's width must be the transformer's caption_channels (checked now, from configs only).
        var t5 = gguf is null ? T5Config.Load(Path.Combine(textEncoderDir, "config.json")) : T5EncoderModel.ConfigFromGguf(gguf);
        if (gguf is not null) Loading.Gguf.GgufT5.CheckFitsTransformer(gguf, t5, transformerConfig.CaptionChannels!.Value);
        else if (t5.DModel != transformerConfig.CaptionChannels)
            throw new WeightFileException($"{Path.Combine(textEncoderDir, "config.json")}: the text encoder's d_model is {t5.DModel}, but the transformer's caption_channels is " +
                $"{transformerConfig.CaptionChannels}: this text encoder does not belong to this transformer (PixArt uses T5-v1.1-XXL, d_model 4096).");
        var loras = options.Loras ?? [];
        if (loras.Count > 0) CheckLoras(transformerDir, options);
        return new PipelineComponents
        {
            Folder = folder,
            Tokenizer = T5Tokenizer.FromModelFolder(folder.ComponentDir("tokenizer")),
            TransformerConfig = transformerConfig,
            VaeScaleFactor = vae.ScaleFactor,
            VaeScalingFactor = vae.Scaling,
            LoadTextEncoder = () => gguf is not null
                ? T5EncoderModel.FromGguf(gguf, options.DType, device)
                : T5EncoderModel.FromFolder(textEncoderDir, options.Variant, options.DType, device, load),
            LoadTransformer = () =>
            {
                var adapters = LoraAdapter.LoadAll(loras);
                try { return PixArtTransformer2DModel.FromFolder(transformerDir, options.Variant, options.DType, device, loras: adapters, load: load); }
                finally { foreach (var (a, _) in adapters) a.Dispose(); }
            },
            LoadVae = () => vae.ClassName switch
            {
                "AutoencoderKL" or null => AutoencoderKL.FromFolder(vaeDir, options.Variant, options.DType, device, load),
                "AutoencoderTiny" => AutoencoderTiny.FromFolder(vaeDir, options.Variant, options.DType, executionDevice),
                var other => throw new WeightFileException($"{Path.Combine(vaeDir, "config.json")}: _class_name '{other}' is not a VAE PixArtSharp implements (AutoencoderKL, AutoencoderTiny)."),
            },
            CreateScheduler = name => SchedulerFactory.Create(folder, name),
            Warnings = folder.VariantFallbacks(options.Variant),
        };
    }

    /// <summary>
    /// Reads the adapters and matches them against the transformer's stored weight names and shapes (headers only),
    /// so a bad adapter is refused before any model work.
    /// </summary>
    private static void CheckLoras(string transformerDir, PipelineOptions options)
    {
        var adapters = LoraAdapter.LoadAll(options.Loras!);
        try
        {
            using var w = ModelFolder.OpenWeights(transformerDir, PixArtTransformer2DModel.WeightStem, options.Variant, options.DType);
            using var merged = LoraMerge.Apply(w, adapters);
        }
        finally { foreach (var (a, _) in adapters) a.Dispose(); }
    }

    /// <summary>
    /// A component's folder: the model folder's <paramref name="component"/>/ sub-folder, or <paramref name="other"/>
    /// — a folder holding the component's config.json itself, or a pipeline folder with that sub-folder.
    /// </summary>
    public static string ComponentDir(ModelFolder folder, string component, string? other)
    {
        if (other is null) return folder.ComponentDir(component);
        string full = Path.GetFullPath(other);
        if (File.Exists(Path.Combine(full, "config.json"))) return full;
        if (File.Exists(Path.Combine(full, component, "config.json"))) return Path.Combine(full, component);
        throw new ModelNotFoundException(
            $"The {component} given ({other}) is not a {component} folder: it has neither config.json nor {component}/config.json. " +
            $"Give the folder that holds the {component}'s config.json and weights, or a pipeline folder with a {component}/ inside.");
    }

    /// <summary>The keys of a VAE config the pipeline needs before the VAE loads (AutoencoderKL and AutoencoderTiny share them).</summary>
    internal sealed class VaeConfigHead
    {
        [JsonPropertyName("_class_name")] public string? ClassName { get; set; }
        public int[]? BlockOutChannels { get; set; }
        /// <summary>AutoencoderTiny's, when block_out_channels is absent (diffusers writes both).</summary>
        public int[]? DecoderBlockOutChannels { get; set; }
        public double? ScalingFactor { get; set; }

        private int[] Levels => BlockOutChannels ?? DecoderBlockOutChannels ?? (ClassName == "AutoencoderTiny" ? [64, 64, 64, 64] : [64]);
        public int ScaleFactor => 1 << (Levels.Length - 1);
        /// <summary>The config's, or the class default (AutoencoderKL 0.18215, AutoencoderTiny 1.0).</summary>
        public double Scaling => ScalingFactor ?? (ClassName == "AutoencoderTiny" ? 1.0 : 0.18215);

        public static VaeConfigHead Load(string path)
        {
            var c = ConfigJson.Load<VaeConfigHead>(path);
            if (c.Levels.Length is < 1 or > 8)
                throw new WeightFileException($"{path}: block_out_channels has {c.Levels.Length} entries; a VAE has 1 to 8 levels.");
            if (!double.IsFinite(c.Scaling) || c.Scaling <= 0)
                throw new WeightFileException($"{path}: scaling_factor must be a positive number, got {c.Scaling}.");
            return c;
        }
    }
}
