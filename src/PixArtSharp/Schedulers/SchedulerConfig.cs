using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.RegularExpressions;
using PixArtSharp.Loading;

namespace PixArtSharp.Schedulers;

/// <summary>
/// <c>scheduler/scheduler_config.json</c> for <see cref="LCMScheduler"/>, <see cref="DPMSolverMultistepScheduler"/> and <see cref="DDPMScheduler"/>
/// (diffusers v0.29.2 <c>__init__</c> arguments). Missing keys take diffusers' defaults. Where the two schedulers'
/// defaults differ (beta_start, beta_end, beta_schedule, timestep_spacing) the property is nullable and each
/// scheduler applies its own default (see the <c>…For…</c> helpers). Keys of other schedulers are ignored.
/// </summary>
internal sealed partial class SchedulerConfig
{
    [JsonPropertyName("_class_name")] public string? ClassName { get; set; }

    // ---- shared ----
    public int NumTrainTimesteps { get; set; } = 1000;
    /// <summary>LCM default 0.00085, DPM default 0.0001.</summary>
    public double? BetaStart { get; set; }
    /// <summary>LCM default 0.012, DPM default 0.02.</summary>
    public double? BetaEnd { get; set; }
    /// <summary>"linear", "scaled_linear" or "squaredcos_cap_v2". LCM default "scaled_linear", DPM default "linear".</summary>
    public string? BetaSchedule { get; set; }
    public double[]? TrainedBetas { get; set; }
    /// <summary>"epsilon", "sample" or "v_prediction".</summary>
    public string PredictionType { get; set; } = "epsilon";
    public bool Thresholding { get; set; }
    public double DynamicThresholdingRatio { get; set; } = 0.995;
    public double SampleMaxValue { get; set; } = 1.0;
    /// <summary>DPM: "linspace" (default), "leading" or "trailing". LCM: stored but never read (default "leading").</summary>
    public string? TimestepSpacing { get; set; }
    public int StepsOffset { get; set; }
    public bool RescaleBetasZeroSnr { get; set; }

    // ---- LCMScheduler ----
    public int OriginalInferenceSteps { get; set; } = 50;
    /// <summary>LCM default false, DDPM default true: the JSON value as read (null when absent), see <see cref="ClipSampleFor"/>.</summary>
    [JsonPropertyName("clip_sample")] public bool? ClipSampleSetting { get; set; }
    /// <summary>clip_sample with LCM's default (false) when the file does not say.</summary>
    [JsonIgnore] public bool ClipSample { get => ClipSampleSetting ?? false; set => ClipSampleSetting = value; }
    public double ClipSampleRange { get; set; } = 1.0;
    public bool SetAlphaToOne { get; set; } = true;
    /// <summary>Absent from the real PixArt-LCM config; diffusers' default 10.0 then applies.</summary>
    public double TimestepScaling { get; set; } = 10.0;

    // ---- DPMSolverMultistepScheduler ----
    public int SolverOrder { get; set; } = 2;
    public string AlgorithmType { get; set; } = "dpmsolver++";
    public string SolverType { get; set; } = "midpoint";
    public bool LowerOrderFinal { get; set; } = true;
    public bool EulerAtFinal { get; set; }
    public bool UseKarrasSigmas { get; set; }
    public bool UseLuLambdas { get; set; }
    /// <summary>"zero" (default) or "sigma_min". A JSON null is kept as null (diffusers then fails in set_timesteps).</summary>
    public string? FinalSigmasType { get; set; } = "zero";
    public double LambdaMinClipped { get; set; } = double.NegativeInfinity;
    public string? VarianceType { get; set; }

    /// <summary>
    /// Reads <c>scheduler_config.json</c>; <paramref name="path"/> is the file or the <c>scheduler</c> folder.
    /// Python's json writes bare <c>-Infinity</c> (PixArt's <c>lambda_min_clipped</c>), <c>Infinity</c> and <c>NaN</c>,
    /// which System.Text.Json only reads when quoted: they are quoted first, then parsed with
    /// <see cref="ConfigJson.Options"/> (named floating-point literals allowed).
    /// </summary>
    public static SchedulerConfig Load(string path)
    {
        string file = Directory.Exists(path) ? Path.Combine(path, "scheduler_config.json") : path;
        if (FileKinds.Of(file) == FileKind.Missing)
            throw new ModelNotFoundException($"Config file not found: {file}. Is this a diffusers model folder?");
        SchedulerConfig config;
        try
        {
            string json = BareNonFinite().Replace(ModelFiles.ReadAllText(file, "scheduler config"), m => $"{m.Groups[1].Value}\"{m.Groups[2].Value}\"");
            config = JsonSerializer.Deserialize<SchedulerConfig>(json, ConfigJson.Options)
                     ?? throw new WeightFileException($"{file} is empty or null; download the model again.");
        }
        catch (JsonException e)
        {
            throw new ModelConfigException(file, e.Path is { Length: > 2 } jp && jp.StartsWith("$.", StringComparison.Ordinal) ? jp[2..] : null, $"{file} is not a valid config ({e.Message}); download the model again.", e);
        }
        config.Validate(file);
        return config;
    }

    /// <summary>The most training timesteps a config may claim: real models use 1000; tables are allocated from it.</summary>
    public const int MaxTrainTimesteps = 100_000;

    /// <summary>
    /// Refuses values no scheduler can run, before anything is allocated from them, naming the file and key:
    /// num_train_timesteps outside 1..<see cref="MaxTrainTimesteps"/>, trained_betas of another length or outside
    /// (0, 1], beta_start/beta_end outside (0, 1) or start &gt; end, a steps_offset past the schedule, non-finite
    /// settings. Scheduler-specific choices (solver order, algorithm) are checked by each scheduler.
    /// </summary>
    public void Validate(string source = "scheduler config")
    {
        void Bad(string key, string msg) => throw new ModelConfigException(source, key, $"{source}: {msg}");
        if (NumTrainTimesteps is < 1 or > MaxTrainTimesteps)
            Bad("num_train_timesteps", $"num_train_timesteps is {NumTrainTimesteps}; it must be 1..{MaxTrainTimesteps} (the models were trained with 1000).");
        if (TrainedBetas is { } tb)
        {
            if (tb.Length != NumTrainTimesteps)
                Bad("trained_betas", $"trained_betas has {tb.Length} entries but num_train_timesteps is {NumTrainTimesteps}; they must match.");
            for (int i = 0; i < tb.Length; i++)
                if (!(tb[i] > 0 && tb[i] <= 1))
                    Bad("trained_betas", $"trained_betas[{i}] is {tb[i]}; every beta must be in (0, 1].");
        }
        if (BetaStart is { } bs && !(bs > 0 && bs < 1))
            Bad("beta_start", $"beta_start is {bs}; it must be in (0, 1) (PixArt uses 0.0001).");
        if (BetaEnd is { } be && !(be > 0 && be < 1))
            Bad("beta_end", $"beta_end is {be}; it must be in (0, 1) (PixArt uses 0.02).");
        if (BetaStart is { } s && BetaEnd is { } e && s > e)
            Bad("beta_start", $"beta_start {s} is larger than beta_end {e}; the noise must grow with the timestep.");
        if (StepsOffset < 0 || StepsOffset >= NumTrainTimesteps)
            Bad("steps_offset", $"steps_offset is {StepsOffset}; it must be 0..num_train_timesteps−1 (usually 0 or 1).");
        if (OriginalInferenceSteps is < 1 or > MaxTrainTimesteps)
            Bad("original_inference_steps", $"original_inference_steps is {OriginalInferenceSteps}; it must be 1..{MaxTrainTimesteps} (PixArt-LCM uses 50).");
        if (SolverOrder is < 1 or > 4)
            Bad("solver_order", $"solver_order is {SolverOrder}; it must be 1..4.");
        if (!double.IsFinite(TimestepScaling) || !double.IsFinite(SampleMaxValue) || !double.IsFinite(ClipSampleRange))
            Bad(!double.IsFinite(TimestepScaling) ? "timestep_scaling" : !double.IsFinite(SampleMaxValue) ? "sample_max_value" : "clip_sample_range",
                "timestep_scaling, sample_max_value and clip_sample_range must be finite numbers.");
        if (!(DynamicThresholdingRatio > 0 && DynamicThresholdingRatio <= 1))
            Bad("dynamic_thresholding_ratio", $"dynamic_thresholding_ratio is {DynamicThresholdingRatio}; it must be in (0, 1].");
    }

    /// <summary>
    /// Builds a scheduler from a config file: the constructor's refusals (ArgumentException for values diffusers
    /// rejects, NotSupportedException for options this port lacks) become a <see cref="ModelConfigException"/>
    /// naming the file, since the file — not the caller — is at fault.
    /// </summary>
    internal static T Build<T>(string file, Func<T> create)
    {
        try
        {
            return create();
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException)
        {
            string msg = e is ArgumentException { ParamName: { } p } a && a.Message.EndsWith($" (Parameter '{p}')", StringComparison.Ordinal)
                ? a.Message[..^$" (Parameter '{p}')".Length] : e.Message;
            throw new ModelConfigException(file, null, $"{file}: {msg}", e);
        }
    }

    // A bare literal in value position (after ':', '[' or ','), outside strings.
    [GeneratedRegex(@"([:\[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])")]
    private static partial Regex BareNonFinite();

    internal double BetaStartFor(bool lcm) => BetaStart ?? (lcm ? 0.00085 : 0.0001);
    internal double BetaEndFor(bool lcm) => BetaEnd ?? (lcm ? 0.012 : 0.02);
    internal string BetaScheduleFor(bool lcm) => BetaSchedule ?? (lcm ? "scaled_linear" : "linear");
    /// <summary>clip_sample as the file gives it, else the scheduler's default (DDPM: true; LCM: false).</summary>
    internal bool ClipSampleFor(bool ddpm) => ClipSampleSetting ?? ddpm;
    internal string TimestepSpacingFor(bool lcm) => TimestepSpacing ?? (lcm ? "leading" : "linspace");
}
