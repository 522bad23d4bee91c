using PixArtSharp.Loading;
using static TorchSharp.torch;

namespace PixArtSharp.Schedulers;

/// <summary>
/// What the pipeline needs from a scheduler: diffusers' set_timesteps / step / add_noise contract, plus the model
/// defaults a diffusers user gets from the pipeline for it. One implementation per diffusers scheduler class.
/// </summary>
internal interface IScheduler : IDisposable
{
    /// <summary>diffusers' class name, as written in model_index.json.</summary>
    string ClassName { get; }
    long[] Timesteps { get; }
    double InitNoiseSigma { get; }
    /// <summary>Steps and guidance the pipeline uses when the caller gives none.</summary>
    int DefaultSteps { get; }
    double DefaultGuidance { get; }
    /// <summary>Whether custom <c>timesteps</c> lists are accepted (diffusers raises for SA-Solver).</summary>
    bool AcceptsCustomTimesteps { get; }

    void SetTimesteps(int? numInferenceSteps, IReadOnlyList<int>? timesteps = null);
    void SetBeginIndex(int beginIndex = 0);
    /// <summary>x_t → x_{t−1} (diffusers' <c>step(...).prev_sample</c>). Stochastic schedulers draw from <paramref name="noise"/>.</summary>
    Tensor Step(Tensor modelOutput, long timestep, Tensor sample, NoiseSource? noise);
    /// <summary>
    /// The last <see cref="Step"/>'s <c>pred_original_sample</c> (x₀), for schedulers whose step output has one
    /// (DDPM); null for the others. It lives in the dispose scope of that Step call.
    /// </summary>
    Tensor? PredOriginalSample => null;
    /// <summary>
    /// ᾱ_t (<c>alphas_cumprod[t]</c>) of the training schedule, for the predicted clean latents the live previews show
    /// (x̂₀ = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t); null when the scheduler has no such table.
    /// </summary>
    double? AlphaProd(long timestep) => null;
    Tensor AddNoise(Tensor originalSamples, Tensor noise, Tensor timesteps);
}

/// <summary>
/// Builds the scheduler a model folder names, or the one the user asks for. Public for <see cref="Names"/> only:
/// a caller picks a scheduler by name (<c>PipelineOptions.Scheduler</c>, <c>GenerationRequest.Scheduler</c>) and the
/// pipeline builds it.
/// </summary>
public static class SchedulerFactory
{
    /// <summary>
    /// The scheduler names a pipeline accepts (<c>PipelineOptions.Scheduler</c>, <c>GenerationRequest.Scheduler</c>,
    /// the CLI's --scheduler): "lcm", "dpm-solver" (DPM-Solver++), "sa-solver" and "ddpm".
    /// </summary>
    public static readonly IReadOnlyList<string> Names = ["lcm", "dpm-solver", "sa-solver", "ddpm"];

    /// <summary>
    /// The scheduler for <paramref name="folder"/>: the class in model_index.json built from scheduler_config.json,
    /// or <paramref name="overrideName"/> ("lcm", "dpm-solver", "sa-solver", "ddpm") built from the same config file
    /// the way diffusers' <c>from_config</c> does (unknown keys ignored, missing ones defaulted).
    /// </summary>
    internal static IScheduler Create(ModelFolder folder, string? overrideName = null)
    {
        string dir = folder.ComponentDir("scheduler");
        string configPath = Path.Combine(dir, "scheduler_config.json");
        string name = overrideName?.Trim().ToLowerInvariant() ?? folder.ClassOf("scheduler") switch
        {
            "LCMScheduler" => "lcm",
            "DPMSolverMultistepScheduler" => "dpm-solver",
            "SASolverScheduler" => "sa-solver",
            "DDPMScheduler" => "ddpm",
            var other => throw new WeightFileException(
                $"{folder.Root}: model_index.json names scheduler class '{other}', which PixArtSharp does not implement. " +
                "Choose one with --scheduler lcm, dpm-solver, sa-solver or ddpm."),
        };
        return name switch
        {
            "lcm" => LCMScheduler.FromConfig(configPath),
            "dpm-solver" or "dpm" or "dpmsolver" => DPMSolverMultistepScheduler.FromConfig(configPath),
            // PixArt's demo: SASolverScheduler.from_config(dpm_config, algorithm_type='data_prediction', tau_func=…, orders 2/2).
            "sa-solver" or "sa" or "sasolver" => SASolverScheduler.FromConfigFile(configPath),
            "ddpm" => DDPMScheduler.FromConfig(configPath),
            _ => throw new ArgumentException($"Unknown scheduler '{overrideName}'. Choose one of: {string.Join(", ", Names)}.", nameof(overrideName)),
        };
    }
}
