using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.Extensions.AI;
using PixArtSharp.Hub;
using PixArtSharp.Imaging;
using PixArtSharp.Pipeline;
using static TorchSharp.torch;

// Microsoft.Extensions.AI marks IImageGenerator experimental (MEAI001); this file implements it on purpose.
#pragma warning disable MEAI001

namespace PixArtSharp;

/// <summary>How a <see cref="PixArtImageGenerator"/> loads its model and what it allows.</summary>
public sealed record PixArtImageGeneratorOptions
{
    /// <summary>The dtype weights are held and computed in: fp32 (the default, diffusers' numbers), bf16 or fp16.</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;
    /// <summary>Where the models run (CPU when null).</summary>
    public Device? Device { get; init; }
    /// <summary>The default scheduler ("lcm", "dpm-solver", "sa-solver", "ddpm"); null = model_index.json's.</summary>
    public string? Scheduler { get; init; }
    /// <summary>A weights variant such as "fp16"; null = the default weights.</summary>
    public string? Variant { get; init; }
    /// <summary>A Hub revision (branch, tag or commit) for a Hub id; null = main.</summary>
    public string? Revision { get; init; }
    /// <summary>Hub endpoint, cache folder and token; null = from the environment (HF_HOME, HF_TOKEN, …), as the CLI.</summary>
    public HubSettings? Hub { get; init; }
    /// <summary>Download progress of a Hub id's files (the first generation downloads what the cache lacks).</summary>
    public IProgress<DownloadProgress>? DownloadProgress { get; init; }
    /// <summary>Keep every component loaded between calls (true: a service) or load each per stage (false: least memory).</summary>
    public bool KeepLoaded { get; init; } = true;
    /// <summary>Bounds on sizes, steps, images per call and prompt length; default the CLI's.</summary>
    public GenerationLimits Limits { get; init; } = GenerationLimits.Cli;
}

/// <summary>
/// PixArt-α/Σ behind Microsoft.Extensions.AI's <see cref="IImageGenerator"/>: text-to-image for a prompt, and
/// image-to-image (SDEdit) when the request carries an original image (<c>EditImageAsync</c>). Each image comes back
/// as a <see cref="DataContent"/> holding exactly the bytes <c>pixart generate</c> writes for the same settings (PNG,
/// settings in its text chunks), or JPEG/WebP when <see cref="ImageGenerationOptions.MediaType"/> asks for them.
/// <para>
/// <see cref="ImageGenerationOptions"/>: <c>ImageSize</c> (width × height), <c>Count</c> (images per call),
/// <c>MediaType</c> (image/png, image/jpeg, image/webp), <c>ModelId</c> (null or this generator's model), and
/// <c>AdditionalProperties</c>: <c>seed</c>, <c>steps</c>, <c>guidance</c>, <c>negative_prompt</c>, <c>style</c>,
/// <c>scheduler</c>, <c>strength</c> (edits), <c>resolution_binning</c>, <c>output_compression</c> (JPEG/WebP
/// quality 0–100). The model loads (and a Hub id downloads) on the first call; one generation runs at a time.
/// </para>
/// </summary>
public sealed class PixArtImageGenerator : IImageGenerator
{
    /// <summary>The keys <see cref="ImageGenerationOptions.AdditionalProperties"/> may hold.</summary>
    public static IReadOnlyList<string> AdditionalPropertyNames { get; } =
        ["seed", "steps", "guidance", "negative_prompt", "style", "scheduler", "strength", "resolution_binning", "output_compression"];

    private readonly string? _model;
    private readonly PixArtImageGeneratorOptions _options;
    private readonly bool _ownsPipeline;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private PixArtPipeline? _pipeline;
    private ModelInfo? _modelInfo;
    private bool _disposed;

    /// <summary>A generator for a Hub id (e.g. PixArt-alpha/PixArt-LCM-XL-2-1024-MS) or a local diffusers folder.</summary>
    /// <param name="model">A Hub id (downloaded into, or reused from, the Hugging Face cache on first use) or a folder.</param>
    /// <param name="options">How to load it; null = fp32 on the CPU with the model's scheduler.</param>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters",
        Justification = "The overloads differ in their first parameter (a model id or a pipeline): no call can mean both.")]
    public PixArtImageGenerator(string model, PixArtImageGeneratorOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(model);
        _model = model;
        _options = options ?? new PixArtImageGeneratorOptions();
        _ownsPipeline = true;
        Metadata = new ImageGeneratorMetadata("pixartsharp", null, model);
    }

    /// <summary>A generator over a pipeline the caller built (and disposes).</summary>
    /// <param name="pipeline">The pipeline to run.</param>
    /// <param name="model">What the PNGs record as the model; null = the pipeline's folder (full path) in fp32.</param>
    /// <param name="limits">Bounds on each call; null = the CLI's.</param>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("ApiDesign", "RS0026:Do not add multiple public overloads with optional parameters",
        Justification = "The overloads differ in their first parameter (a model id or a pipeline): no call can mean both.")]
    public PixArtImageGenerator(PixArtPipeline pipeline, ModelInfo? model = null, GenerationLimits? limits = null)
    {
        ArgumentNullException.ThrowIfNull(pipeline);
        _pipeline = pipeline;
        _modelInfo = model ?? new ModelInfo(pipeline.Folder?.Root ?? pipeline.ClassName, null, pipeline.Options.Variant, DTypeName(pipeline.Options.DType));
        _options = new PixArtImageGeneratorOptions { Limits = limits ?? GenerationLimits.Cli };
        _ownsPipeline = false;
        Metadata = new ImageGeneratorMetadata("pixartsharp", null, _modelInfo.Model);
    }

    /// <summary>Provider "pixartsharp" and the model as given.</summary>
    public ImageGeneratorMetadata Metadata { get; }

    /// <summary>What the images record about the model (as <c>pixart generate</c> records it); null until loaded.</summary>
    public ModelInfo? Model => _modelInfo;

    /// <summary>The pipeline, loading it (and downloading a Hub id's missing files) if this is the first use.</summary>
    public async Task<PixArtPipeline> GetPipelineAsync(CancellationToken cancellationToken = default)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try { return await LoadAsync(cancellationToken).ConfigureAwait(false); }
        finally { _gate.Release(); }
    }

    /// <inheritdoc />
    public async Task<ImageGenerationResponse> GenerateAsync(ImageGenerationRequest request, ImageGenerationOptions? options = null,
                                                             CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (string.IsNullOrWhiteSpace(request.Prompt))
            throw new ArgumentException("request.Prompt is empty: give the text describing the image.", nameof(request));
        var format = MediaFormat(options);
        if (options?.ResponseFormat is { } rf && rf != ImageGenerationResponseFormat.Data)
            throw new NotSupportedException($"options.ResponseFormat {rf}: PixArtImageGenerator answers with image data only (ImageGenerationResponseFormat.Data); it hosts no files.");
        var extra = Additional(options);
        if (extra.Compression is < 0 or > 100)
            throw new ArgumentException($"options.AdditionalProperties[\"output_compression\"] must be between 0 and 100 (the JPEG/WebP quality), got {extra.Compression}.", nameof(options));
        int quality = ImageEncoder.CheckQuality(extra.Compression);
        var source = SourceImage(request);

        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var pipeline = await LoadAsync(cancellationToken).ConfigureAwait(false);
            var model = _modelInfo!;
            if (options?.ModelId is { } id && !string.Equals(id, _model ?? model.Model, StringComparison.Ordinal)
                && !string.Equals(id, ImageFiles.ModelLabel(model.Model), StringComparison.Ordinal))
                throw new ArgumentException($"options.ModelId '{id}' is not this generator's model ({_model ?? model.Model}); leave it null or create a generator for that model.", nameof(options));

            // 1. The settings `pixart generate` would make for the same flags (one batch, seed as given or random).
            var settings = new GenerationSettings
            {
                Prompts = [request.Prompt],
                NegativePrompt = extra.NegativePrompt ?? "",
                Style = extra.Style,
                Steps = extra.Steps,
                Guidance = extra.Guidance,
                Seed = extra.Seed ?? Random.Shared.NextInt64(0, 1L << 53),
                Width = options?.ImageSize?.Width,
                Height = options?.ImageSize?.Height,
                NumImages = options?.Count ?? 1,
                Scheduler = extra.Scheduler,
                ResolutionBinning = extra.ResolutionBinning ?? true,
                Strength = extra.Strength,
            };
            if (source is null && extra.Strength is not null)
                throw new ArgumentException("options.AdditionalProperties[\"strength\"] only applies to edits: put the original image in request.OriginalImages.", nameof(options));

            // 2. Edits: the source at the output size (its own, or ImageSize when given), as `pixart generate --image`.
            RgbImage? fitted = null;
            if (source is { } src)
            {
                var (w, h) = options?.ImageSize is { } size
                    ? (size.Width, size.Height)
                    : Checked(() => ImageToImage.OutputSize(src.Image.Width, src.Image.Height, resizeToFit: false, 0, _options.Limits.MaxSide,
                        "options.ImageSize", pipeline.SizeMultiple));
                settings = settings with
                {
                    Strength = settings.Strength ?? ImageToImage.DefaultStrength,
                    ImageSha256 = src.Sha256,
                    Width = w,
                    Height = h,
                    ResolutionBinning = false,
                };
                Checked(() => settings.Validate(_options.Limits));
                if (w % pipeline.SizeMultiple != 0 || h % pipeline.SizeMultiple != 0)
                    throw new ArgumentException($"options.ImageSize {w}x{h}: an edit's size must be a multiple of {pipeline.SizeMultiple} on both sides.", nameof(options));
                fitted = ImageToImage.Resize(src.Image, w, h);
            }
            else
                Checked(() => settings.Validate(_options.Limits));
            settings = Checked(() => settings.Resolve(pipeline));

            // 3. Run, off the caller's thread (it is CPU work), cancellable between steps.
            return await Task.Run(() =>
            {
                using var image = fitted is null ? null : ImageToImage.Preprocess(fitted);
                var req = settings.ToRequest() with { Image = image, Strength = settings.Strength };
                using var output = pipeline.Generate(req, _ => !cancellationToken.IsCancellationRequested, cancellationToken);
                var rgb = output.ToRgb8();
                var contents = new List<AIContent>(rgb.Length);
                for (int i = 0; i < rgb.Length; i++)
                {
                    byte[] bytes = ImageEncoder.Encode(format, settings, i, rgb[i], output.Width, output.Height, model, quality);
                    contents.Add(new DataContent(bytes, ImageEncoder.MediaType(format))
                    {
                        AdditionalProperties = new AdditionalPropertiesDictionary
                        {
                            ["seed"] = settings.Seed!.Value,
                            ["parameters"] = settings.ToParametersText(i / settings.NumImages, ImageFiles.ModelLabel(model.Model), model.ModelRevision, ImageFiles.Version),
                        },
                    });
                }
                return new ImageGenerationResponse(contents) { RawRepresentation = settings };
            }, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>
    /// <see cref="PixArtPipeline"/> (loading it if needed), <see cref="ImageGeneratorMetadata"/>, or this generator;
    /// null for anything else or a keyed request.
    /// </summary>
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ImageGeneratorMetadata)) return Metadata;
        if (serviceType.IsInstanceOfType(this)) return this;
        if (typeof(PixArtPipeline).IsAssignableFrom(serviceType))
        {
            var p = GetPipelineAsync().GetAwaiter().GetResult();
            return serviceType.IsInstanceOfType(p) ? p : null;
        }
        return null;
    }

    /// <summary>Frees the pipeline if this generator loaded it.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_ownsPipeline) _pipeline?.Dispose();
        _gate.Dispose();
    }

    private async Task<PixArtPipeline> LoadAsync(CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_pipeline is not null) return _pipeline;
        string folder = await ModelLocator.ResolveAsync(_model!, _options.Revision, _options.Variant, _options.DownloadProgress,
            _options.Hub ?? HubSettings.FromEnvironment(), ct).ConfigureAwait(false);
        bool isLocal = Directory.Exists(_model);
        // Recorded as the CLI records it: a folder by its full path, a Hub id with the snapshot's commit.
        _modelInfo = new ModelInfo(isLocal ? Path.GetFullPath(_model!) : _model!,
            isLocal ? null : Path.GetFileName(Path.TrimEndingDirectorySeparator(folder)), _options.Variant, DTypeName(_options.DType));
        _pipeline = PixArtPipeline.FromPretrained(folder, new PipelineOptions
        {
            DType = _options.DType,
            Device = _options.Device,
            Variant = _options.Variant,
            Scheduler = _options.Scheduler,
            KeepLoaded = _options.KeepLoaded,
        });
        return _pipeline;
    }

    private static string DTypeName(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => "fp32",
        ScalarType.BFloat16 => "bf16",
        ScalarType.Float16 => "fp16",
        _ => throw new ArgumentException($"dtype {dtype} is not supported; use Float32, BFloat16 or Float16.", nameof(dtype)),
    };

    private static ImageFormat MediaFormat(ImageGenerationOptions? options)
    {
        if (options?.MediaType is not { } mt) return ImageFormat.Png;
        return ImageEncoder.TryParse(mt) is { } f && mt.Contains('/')
            ? f
            : throw new ArgumentException($"options.MediaType '{mt}' is not supported; use image/png, image/jpeg or image/webp.", nameof(options));
    }

    private sealed record Extra(long? Seed, int? Steps, double? Guidance, string? NegativePrompt, string? Style, string? Scheduler,
                                double? Strength, bool? ResolutionBinning, int? Compression);

    private static Extra Additional(ImageGenerationOptions? options)
    {
        var props = options?.AdditionalProperties;
        if (props is null || props.Count == 0) return new Extra(null, null, null, null, null, null, null, null, null);
        foreach (var key in props.Keys)
            if (!AdditionalPropertyNames.Contains(key))
                throw new ArgumentException($"options.AdditionalProperties[\"{key}\"] is not known. Known keys: {string.Join(", ", AdditionalPropertyNames)}.", nameof(options));
        T? Get<T>(string key, Func<object, T?> convert) where T : struct
        {
            if (!props.TryGetValue(key, out var v) || v is null) return null;
            try { return convert(v is JsonElement je ? je.ValueKind == JsonValueKind.String ? je.GetString()! : (object)je.GetRawText() : v); }
            catch (Exception e) when (e is FormatException or InvalidCastException or OverflowException)
            {
                throw new ArgumentException($"options.AdditionalProperties[\"{key}\"] = {v}: expected a {typeof(T).Name}.", nameof(options), e);
            }
        }
        string? Str(string key)
        {
            if (!props.TryGetValue(key, out var v) || v is null) return null;
            return v as string ?? (v is JsonElement { ValueKind: JsonValueKind.String } je ? je.GetString()
                : throw new ArgumentException($"options.AdditionalProperties[\"{key}\"] must be a string, got {v.GetType().Name}.", nameof(options)));
        }
        static long L(object v) => Convert.ToInt64(v, CultureInfo.InvariantCulture);
        static double D(object v) => Convert.ToDouble(v, CultureInfo.InvariantCulture);
        static bool B(object v) => v is string s ? bool.Parse(s) : Convert.ToBoolean(v, CultureInfo.InvariantCulture);
        return new Extra(
            Get("seed", v => (long?)L(v)),
            Get("steps", v => (int?)checked((int)L(v))),
            Get("guidance", v => (double?)D(v)),
            Str("negative_prompt"),
            Str("style"),
            Str("scheduler"),
            Get("strength", v => (double?)D(v)),
            Get("resolution_binning", v => (bool?)B(v)),
            Get("output_compression", v => (int?)checked((int)L(v))));
    }

    private sealed record Source(string Sha256, RgbImage Image);

    private static Source? SourceImage(ImageGenerationRequest request)
    {
        if (request.OriginalImages is not { } originals) return null;
        var list = originals.ToList();
        if (list.Count == 0) return null;
        if (list.Count > 1)
            throw new ArgumentException($"request.OriginalImages has {list.Count} images; PixArt edits one image at a time.", nameof(request));
        if (list[0] is not DataContent { } data || !data.HasTopLevelMediaType("image"))
            throw new ArgumentException($"request.OriginalImages[0] is a {list[0]?.GetType().Name ?? "null"}; give the image's bytes as a DataContent with an image/* media type (e.g. image/png).", nameof(request));
        byte[] bytes = data.Data.ToArray();
        try
        {
            return new Source(Convert.ToHexStringLower(SHA256.HashData(bytes)), ImageReader.Decode(bytes, data.Name ?? "request.OriginalImages[0]"));
        }
        catch (ImageReadException e)
        {
            throw new ArgumentException($"request.OriginalImages[0]: {e.Message}", nameof(request), e);
        }
    }

    private static void Checked(Action check) => Checked(() => { check(); return 0; });

    /// <summary>A settings check's ArgumentException, restated for this API (its option names, the caller's parameter).</summary>
    private static T Checked<T>(Func<T> check)
    {
        try { return check(); }
        catch (ArgumentException e) when (e.ParamName is not ("options" or "request"))
        {
            string message = e.Message;
            int i = message.LastIndexOf(" (Parameter '", StringComparison.Ordinal);
            if (i > 0) message = message[..i];
            string where = e.ParamName switch
            {
                "prompts" => "request.Prompt",
                "num_images" => "options.Count",
                "width" or "height" => "options.ImageSize",
                null => "options",
                var p => $"options.AdditionalProperties[\"{(p == "name" ? "style" : p)}\"]",
            };
            throw new ArgumentException($"{where}: {message}", e.ParamName == "prompts" ? "request" : "options", e);
        }
    }
}
