using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace PixArtSharp.Pipeline;

/// <summary>Bounds a front end accepts. The server is stricter than the CLI (it serves other people).</summary>
public sealed record GenerationLimits(int MinSide, int MaxSide, int MaxSteps, int MaxImages, int MaxPromptChars, double MaxGuidance)
{
    /// <summary>The CLI: anything the models can run, within reason.</summary>
    public static readonly GenerationLimits Cli = new(MinSide: 8, MaxSide: 4096, MaxSteps: 1000, MaxImages: 64, MaxPromptChars: 20_000, MaxGuidance: 50);
    /// <summary>The server (issue: size ≤ 2048, steps ≤ 50, n ≤ 8, bounded prompt length).</summary>
    public static readonly GenerationLimits Server = new(MinSide: 8, MaxSide: 2048, MaxSteps: 50, MaxImages: 8, MaxPromptChars: 2_000, MaxGuidance: 20);
}

/// <summary>
/// One generation as a user states it — the single definition shared by <c>pixart generate</c>, <c>pixart serve</c>
/// and the PNG metadata (<c>--from-png</c>). Field names are the JSON names the server takes and the PNG records.
/// Null means "the model's default" until <see cref="Resolve"/> fills it in.
/// </summary>
public sealed record GenerationSettings
{
    [JsonPropertyName("prompts")] public IReadOnlyList<string> Prompts { get; init; } = [];
    [JsonPropertyName("negative_prompt")] public string NegativePrompt { get; init; } = "";
    /// <summary>One of <see cref="StylePresets"/> (PixArt demo presets); applied to every prompt.</summary>
    [JsonPropertyName("style")] public string? Style { get; init; }
    [JsonPropertyName("steps")] public int? Steps { get; init; }
    [JsonPropertyName("guidance")] public double? Guidance { get; init; }
    [JsonPropertyName("seed")] public long? Seed { get; init; }
    [JsonPropertyName("width")] public int? Width { get; init; }
    [JsonPropertyName("height")] public int? Height { get; init; }
    /// <summary>Images per prompt.</summary>
    [JsonPropertyName("num_images")] public int NumImages { get; init; } = 1;
    /// <summary>"lcm", "dpm-solver", "sa-solver"; null = model_index.json's.</summary>
    [JsonPropertyName("scheduler")] public string? Scheduler { get; init; }
    [JsonPropertyName("resolution_binning")] public bool ResolutionBinning { get; init; } = true;
    [JsonPropertyName("clean_caption")] public bool CleanCaption { get; init; } = true;
    /// <summary>Image-to-image strength in (0, 1]; null for text-to-image.</summary>
    [JsonPropertyName("strength")] public double? Strength { get; init; }
    /// <summary>sha256 (hex) of the image-to-image source file, recorded so a run can be reproduced.</summary>
    [JsonPropertyName("image_sha256")] public string? ImageSha256 { get; init; }

    public static readonly JsonSerializerOptions JsonOptions = new()
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        WriteIndented = false,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>
    /// Checks every field against <paramref name="limits"/> before any model work. Throws ArgumentException whose
    /// ParamName is the JSON field name and whose message says what is wrong and what is allowed.
    /// </summary>
    public void Validate(GenerationLimits limits)
    {
        if (Prompts is null || Prompts.Count == 0)
            throw new ArgumentException("Give a prompt: the text describing the image.", "prompts");
        for (int i = 0; i < Prompts.Count; i++)
        {
            if (Prompts[i] is null) throw new ArgumentException($"Prompt {i} is null.", "prompts");
            if (Prompts[i].Length > limits.MaxPromptChars)
                throw new ArgumentException($"Prompt {i} has {Prompts[i].Length} characters; the limit is {limits.MaxPromptChars} (T5 reads only the first 120 tokens anyway).", "prompts");
        }
        if ((NegativePrompt ?? "").Length > limits.MaxPromptChars)
            throw new ArgumentException($"The negative prompt has {NegativePrompt!.Length} characters; the limit is {limits.MaxPromptChars}.", "negative_prompt");
        if (Style is not null) StylePresets.Find(Style); // throws with the list of names
        if (Steps is { } s && (s < 1 || s > limits.MaxSteps))
            throw new ArgumentException($"steps must be between 1 and {limits.MaxSteps}, got {s}.", "steps");
        if (Guidance is { } g && (double.IsNaN(g) || g < 0 || g > limits.MaxGuidance))
            throw new ArgumentException($"guidance must be between 0 and {limits.MaxGuidance}, got {g.ToString(CultureInfo.InvariantCulture)}.", "guidance");
        if (Seed is < 0)
            throw new ArgumentException($"seed must be ≥ 0, got {Seed}.", "seed");
        foreach (var (v, name) in new[] { (Width, "width"), (Height, "height") })
        {
            if (v is not { } side) continue;
            if (side < limits.MinSide || side > limits.MaxSide)
                throw new ArgumentException($"{name} must be between {limits.MinSide} and {limits.MaxSide} pixels, got {side}.", name);
            if (side % 8 != 0)
                throw new ArgumentException($"{name} must be a multiple of 8 (the VAE downsamples by 8), got {side}; try {Math.Max(8, side / 8 * 8)}.", name);
        }
        if (NumImages < 1 || NumImages > limits.MaxImages)
            throw new ArgumentException($"num_images must be between 1 and {limits.MaxImages}, got {NumImages}.", "num_images");
        if (Prompts.Count * NumImages > limits.MaxImages)
            throw new ArgumentException($"{Prompts.Count} prompts × {NumImages} images is {Prompts.Count * NumImages}; the limit per batch is {limits.MaxImages}.", "num_images");
        if (Scheduler is not null && !Schedulers.SchedulerFactory.Names.Contains(Scheduler.Trim().ToLowerInvariant()))
            throw new ArgumentException($"Unknown scheduler '{Scheduler}'. Choose one of: {string.Join(", ", Schedulers.SchedulerFactory.Names)}.", "scheduler");
        if (Strength is { } st && (double.IsNaN(st) || st <= 0 || st > 1))
            throw new ArgumentException($"strength must be in (0, 1], got {st.ToString(CultureInfo.InvariantCulture)}.", "strength");
    }

    /// <summary>
    /// Fills every default from the model: steps and guidance from the scheduler (LCM 4/0, DPM-Solver++ 20/4.5,
    /// SA-Solver 25/3), size from sample_size × 8, a random seed when none is given, and the scheduler name.
    /// </summary>
    public GenerationSettings Resolve(PixArtAlphaPipeline pipeline)
    {
        using var scheduler = Scheduler is null ? null : Schedulers.SchedulerFactory.Create(pipeline.Folder, Scheduler);
        var s = scheduler ?? pipeline.Scheduler;
        return this with
        {
            Style = Style is null ? null : StylePresets.Find(Style).Name,
            Steps = Steps ?? s.DefaultSteps,
            Guidance = Guidance ?? s.DefaultGuidance,
            Width = Width ?? pipeline.DefaultWidth,
            Height = Height ?? pipeline.DefaultHeight,
            Seed = Seed ?? Random.Shared.NextInt64(0, 1L << 53), // within JSON's exact integers
            Scheduler = SchedulerName(s.ClassName),
        };
    }

    /// <summary>The pipeline request for these (resolved) settings: style applied, one generator seeded with Seed.</summary>
    public GenerationRequest ToRequest()
    {
        var styled = Prompts.Select(p => StylePresets.Apply(Style, p, NegativePrompt)).ToList();
        return new GenerationRequest
        {
            Prompts = styled.Select(x => x.Prompt).ToList(),
            // apply_style gives the same negative for every prompt, so one negative prompt serves the batch.
            NegativePrompts = [styled[0].NegativePrompt],
            NumInferenceSteps = Steps,
            GuidanceScale = Guidance,
            NumImagesPerPrompt = NumImages,
            Height = Height,
            Width = Width,
            UseResolutionBinning = ResolutionBinning,
            CleanCaption = CleanCaption,
            Seed = Seed,
            Scheduler = Scheduler,
        };
    }

    /// <summary>Diffusers-style sampler names for the A1111 "Sampler:" field.</summary>
    public static string SamplerLabel(string? scheduler) => scheduler switch
    {
        "lcm" => "LCM",
        "dpm-solver" => "DPM++ 2M",
        "sa-solver" => "SA-Solver",
        _ => scheduler ?? "default",
    };

    public static string SchedulerName(string className) => className switch
    {
        "LCMScheduler" => "lcm",
        "DPMSolverMultistepScheduler" => "dpm-solver",
        "SASolverScheduler" => "sa-solver",
        _ => className,
    };

    /// <summary>
    /// The A1111 / ComfyUI "parameters" text for image <paramref name="promptIndex"/> of these resolved settings:
    /// the (styled) prompt, "Negative prompt: …", then "Key: value" pairs on one line.
    /// </summary>
    public string ToParametersText(int promptIndex, string model, string? modelRevision, string version)
    {
        var (prompt, negative) = StylePresets.Apply(Style, Prompts[promptIndex], NegativePrompt);
        var sb = new StringBuilder();
        sb.Append(prompt).Append('\n');
        if (negative.Length > 0) sb.Append("Negative prompt: ").Append(negative).Append('\n');
        var pairs = new List<string>
        {
            $"Steps: {Steps}",
            $"Sampler: {SamplerLabel(Scheduler)}",
            $"CFG scale: {Guidance?.ToString(CultureInfo.InvariantCulture)}",
            $"Seed: {Seed}",
            $"Size: {Width}x{Height}",
            $"Model: {model}",
        };
        if (modelRevision is not null) pairs.Add($"Model revision: {modelRevision}");
        if (Style is not null && Style != StylePresets.DefaultName) pairs.Add($"Style: {Style}");
        if (Strength is { } st) pairs.Add($"Denoising strength: {st.ToString(CultureInfo.InvariantCulture)}");
        if (ImageSha256 is not null) pairs.Add($"Source image sha256: {ImageSha256}");
        pairs.Add($"Version: PixArtSharp {version}");
        sb.Append(string.Join(", ", pairs));
        return sb.ToString();
    }

    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    public static GenerationSettings FromJson(string json) =>
        JsonSerializer.Deserialize<GenerationSettings>(json, JsonOptions)
        ?? throw new ArgumentException("The settings JSON is empty.", nameof(json));
}
