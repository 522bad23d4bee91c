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
public sealed partial class SchedulerConfig
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
        if (!File.Exists(file))
            throw new ModelNotFoundException($"Config file not found: {file}. Is this a diffusers model folder?");
        try
        {
            string json = BareNonFinite().Replace(File.ReadAllText(file), m => $"{m.Groups[1].Value}\"{m.Groups[2].Value}\"");
            return JsonSerializer.Deserialize<SchedulerConfig>(json, ConfigJson.Options)
                   ?? throw new WeightFileException($"{file} is empty or null; download the model again.");
        }
        catch (JsonException e)
        {
            throw new WeightFileException($"{file} is not a valid config ({e.Message}); download the model again.", e);
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
