using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace PixArtSharp.Pipeline;

/// <summary>Bounds a front end accepts. The server is stricter than the CLI (it serves other people).</summary>
/// <param name="MinSide">Smallest width or height in pixels.</param>
/// <param name="MaxSide">Largest width or height in pixels.</param>
/// <param name="MaxSteps">Most denoising steps.</param>
/// <param name="MaxImages">Most images per call (prompts × images per prompt).</param>
/// <param name="MaxPromptChars">Longest prompt or negative prompt, in characters.</param>
/// <param name="MaxGuidance">Largest guidance scale.</param>
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
    /// <summary>The prompts, one image batch each (before the style is applied).</summary>
    [JsonPropertyName("prompts")] public IReadOnlyList<string> Prompts { get; init; } = [];
    /// <summary>One negative prompt for every prompt ("" = none); used with guidance above 1.</summary>
    [JsonPropertyName("negative_prompt")] public string NegativePrompt { get; init; } = "";
    /// <summary>One of <see cref="StylePresets"/> (PixArt demo presets); applied to every prompt.</summary>
    [JsonPropertyName("style")] public string? Style { get; init; }
    /// <summary>Denoising steps; null = the scheduler's default.</summary>
    [JsonPropertyName("steps")] public int? Steps { get; init; }
    /// <summary>Custom timesteps (diffusers' <c>timesteps=[...]</c>, e.g. [400] for one-step DMD); Steps is then their count.</summary>
    [JsonPropertyName("timesteps")] public IReadOnlyList<int>? Timesteps { get; init; }
    /// <summary>T5 tokens per prompt (null = the pipeline's: α 120, Σ 300).</summary>
    [JsonPropertyName("max_sequence_length")] public int? MaxSequenceLength { get; init; }
    /// <summary>Classifier-free guidance scale; null = the scheduler's default.</summary>
    [JsonPropertyName("guidance")] public double? Guidance { get; init; }
    /// <summary>The generator's seed; null = a random one, recorded once resolved.</summary>
    [JsonPropertyName("seed")] public long? Seed { get; init; }
    /// <summary>Image width in pixels; null = the model's default.</summary>
    [JsonPropertyName("width")] public int? Width { get; init; }
    /// <summary>Image height in pixels; null = the model's default.</summary>
    [JsonPropertyName("height")] public int? Height { get; init; }
    /// <summary>Images per prompt.</summary>
    [JsonPropertyName("num_images")] public int NumImages { get; init; } = 1;
    /// <summary>"lcm", "dpm-solver", "sa-solver"; null = model_index.json's.</summary>
    [JsonPropertyName("scheduler")] public string? Scheduler { get; init; }
    /// <summary>Run at the nearest aspect-ratio bin and resize back (text-to-image only).</summary>
    [JsonPropertyName("resolution_binning")] public bool ResolutionBinning { get; init; } = true;
    /// <summary>Clean prompts as diffusers' <c>clean_caption</c> does.</summary>
    [JsonPropertyName("clean_caption")] public bool CleanCaption { get; init; } = true;
    /// <summary>Image-to-image strength in (0, 1]; null for text-to-image.</summary>
    [JsonPropertyName("strength")] public double? Strength { get; init; }
    /// <summary>sha256 (hex) of the image-to-image source file, recorded so a run can be reproduced.</summary>
    [JsonPropertyName("image_sha256")] public string? ImageSha256 { get; init; }

    internal static readonly JsonSerializerOptions JsonOptions = new()
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
        // Multiples depend on the model and on binning (diffusers bins first: 180 is fine with binning on); Resolve
        // checks them against the pipeline.
        foreach (var (v, name) in new[] { (Width, "width"), (Height, "height") })
        {
            if (v is not { } side) continue;
            if (side < limits.MinSide || side > limits.MaxSide)
                throw new ArgumentException($"{name} must be between {limits.MinSide} and {limits.MaxSide} pixels, got {side}.", name);
        }
        if (Timesteps is { } ts)
        {
            if (ts.Count == 0 || ts.Count > limits.MaxSteps)
                throw new ArgumentException($"timesteps must list 1 to {limits.MaxSteps} timesteps, got {ts.Count}.", "timesteps");
            for (int i = 0; i < ts.Count; i++)
            {
                if (ts[i] < 0 || ts[i] > 999)
                    throw new ArgumentException($"timesteps must be between 0 and 999, got {ts[i]}.", "timesteps");
                if (i > 0 && ts[i] >= ts[i - 1])
                    throw new ArgumentException($"timesteps must be in descending order, got {string.Join(",", ts)}.", "timesteps");
            }
            if (Steps is { } n && n != ts.Count)
                throw new ArgumentException($"steps ({n}) and timesteps ({ts.Count} entries) disagree: give one of the two.", "timesteps");
        }
        if (MaxSequenceLength is { } msl && (msl < 1 || msl > 4096))
            throw new ArgumentException($"max_sequence_length must be between 1 and 4096 tokens, got {msl}.", "max_sequence_length");
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
    /// Fills every default from the pipeline: steps and guidance from the scheduler (LCM 4/0, DPM-Solver++ 20/4.5,
    /// SA-Solver 25/3), size from sample_size × vae_scale_factor, the max sequence length (α 120, Σ 300), a random seed
    /// when none is given, and the scheduler name — and checks what only the model can tell: that the size runs
    /// (multiples of the VAE factor × patch without binning), that custom timesteps are accepted, that an
    /// image-to-image strength leaves a step to run. Throws ArgumentException naming the field.
    /// </summary>
    public GenerationSettings Resolve(PixArtPipeline pipeline)
    {
        ArgumentNullException.ThrowIfNull(pipeline);
        using var s = pipeline.CreateScheduler(Scheduler);
        if (Timesteps is not null && !s.AcceptsCustomTimesteps)
            throw new ArgumentException($"The {SchedulerName(s.ClassName)} scheduler does not take custom timesteps; use --steps, or a scheduler that does (lcm, dpm-solver, ddpm).", "timesteps");
        var resolved = this with
        {
            Style = Style is null ? null : StylePresets.Find(Style).Name,
            Steps = Timesteps?.Count ?? Steps ?? s.DefaultSteps,
            Guidance = Guidance ?? s.DefaultGuidance,
            Width = Width ?? pipeline.DefaultWidth,
            Height = Height ?? pipeline.DefaultHeight,
            MaxSequenceLength = MaxSequenceLength ?? pipeline.DefaultMaxSequenceLength,
            Seed = Seed ?? Random.Shared.NextInt64(0, 1L << 53), // within JSON's exact integers
            Scheduler = SchedulerName(s.ClassName),
        };
        if (pipeline.SizeProblem(resolved.Height!.Value, resolved.Width!.Value, resolved.ResolutionBinning && resolved.Strength is null) is { } problem)
            throw new ArgumentException(problem, resolved.Width % pipeline.SizeMultiple != 0 ? "width" : "height");
        if (resolved.NothingToRun() is { } nothing)
            throw new ArgumentException(nothing, "strength");
        return resolved;
    }

    /// <summary>How many denoising steps a resolved run makes: LCM runs all; DPM-Solver++ and SA-Solver int(steps × strength).</summary>
    public int StepsRun()
    {
        int steps = Steps ?? 0;
        if (Strength is not { } strength || Scheduler == "lcm") return steps;
        return (int)Math.Min((long)Math.Truncate(steps * strength), steps);
    }

    /// <summary>Why these resolved settings would run no denoising step (int(steps × strength) = 0); null when one runs.</summary>
    public string? NothingToRun()
    {
        if (StepsRun() >= 1) return null;
        string st = Strength?.ToString(CultureInfo.InvariantCulture) ?? "?";
        return $"strength {st} x {Steps} steps of {Scheduler} keeps int({(Steps * Strength)?.ToString(CultureInfo.InvariantCulture)}) = 0 steps: nothing would run. " +
               $"Raise strength to at least {(1.0 / (Steps ?? 1)).ToString(CultureInfo.InvariantCulture)} or use more steps.";
    }

    /// <summary>Each prompt and the negative prompt with the style applied: the one place styles are applied.</summary>
    public (IReadOnlyList<string> Prompts, string NegativePrompt) Styled()
    {
        var styled = Prompts.Select(p => StylePresets.Apply(Style, p, NegativePrompt)).ToList();
        // apply_style gives the same negative for every prompt, so one negative prompt serves the batch.
        return (styled.Select(x => x.Prompt).ToList(), styled.Count > 0 ? styled[0].NegativePrompt : StylePresets.Apply(Style, "", NegativePrompt).NegativePrompt);
    }

    /// <summary>The pipeline request for these (resolved) settings: style applied, one generator seeded with Seed.</summary>
    public GenerationRequest ToRequest()
    {
        var (prompts, negative) = Styled();
        return new GenerationRequest
        {
            Prompts = prompts,
            NegativePrompts = [negative],
            NumInferenceSteps = Timesteps is null ? Steps : null,
            Timesteps = Timesteps,
            GuidanceScale = Guidance,
            NumImagesPerPrompt = NumImages,
            Height = Height,
            Width = Width,
            UseResolutionBinning = ResolutionBinning && Strength is null,
            CleanCaption = CleanCaption,
            MaxSequenceLength = MaxSequenceLength,
            Seed = Seed,
            Scheduler = Scheduler,
        };
    }

    /// <summary>
    /// One pipeline request for several compatible one-prompt settings (the server's batch): each keeps its own styled
    /// prompt, negative prompt and seed (one generator per request), so each gets exactly the images it gets alone.
    /// </summary>
    internal static GenerationRequest ToBatchRequest(IReadOnlyList<GenerationSettings> batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        if (batch.Count == 1) return batch[0].ToRequest();
        var styled = batch.Select(s => s.Styled()).ToList();
        return batch[0].ToRequest() with
        {
            Prompts = styled.SelectMany(x => x.Prompts).ToList(),
            NegativePrompts = styled.Select(x => x.NegativePrompt).ToList(),
            Seed = null,
            Generators = batch.Select(s => new TorchSharp.torch.Generator((ulong)s.Seed!.Value)).ToList(),
        };
    }

    /// <summary>Diffusers-style sampler names for the A1111 "Sampler:" field.</summary>
    internal static string SamplerLabel(string? scheduler) => scheduler switch
    {
        "lcm" => "LCM",
        "dpm-solver" => "DPM++ 2M",
        "sa-solver" => "SA-Solver",
        "ddpm" => "DDPM",
        _ => scheduler ?? "default",
    };

    internal static string SchedulerName(string className) => className switch
    {
        "LCMScheduler" => "lcm",
        "DPMSolverMultistepScheduler" => "dpm-solver",
        "SASolverScheduler" => "sa-solver",
        "DDPMScheduler" => "ddpm",
        _ => className,
    };

    /// <summary>
    /// The A1111 / ComfyUI "parameters" text for image <paramref name="promptIndex"/> of these resolved settings:
    /// the (styled) prompt, "Negative prompt: …", then "Key: value" pairs on one line.
    /// </summary>
    public string ToParametersText(int promptIndex, string model, string? modelRevision, string version)
    {
        var (prompts, negative) = Styled();
        string prompt = prompts[promptIndex];
        var sb = new StringBuilder();
        sb.Append(prompt).Append('\n');
        if (negative.Length > 0) sb.Append("Negative prompt: ").Append(negative).Append('\n');
        var pairs = new List<string>
        {
            Timesteps is null ? $"Steps: {Steps}" : $"Steps: {Steps}, Timesteps: {string.Join(" ", Timesteps)}",
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

    /// <summary>The settings as the server takes and the PNG records them (snake_case, nulls left out).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    /// <summary>Reads <see cref="ToJson"/>'s form; ArgumentException for empty JSON, JsonException for malformed.</summary>
    public static GenerationSettings FromJson(string json) =>
        JsonSerializer.Deserialize<GenerationSettings>(json, JsonOptions)
        ?? throw new ArgumentException("The settings JSON is empty.", nameof(json));
}
