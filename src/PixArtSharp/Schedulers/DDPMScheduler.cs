using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Schedulers;

/// <summary>diffusers' <c>DDPMSchedulerOutput</c>; disposing it frees both tensors.</summary>
internal sealed record DDPMSchedulerOutput(Tensor PrevSample, Tensor PredOriginalSample) : IDisposable
{
    public void Dispose()
    {
        PrevSample.Dispose();
        PredOriginalSample.Dispose();
    }
}

/// <summary>
/// Port of diffusers v0.29.2 <c>DDPMScheduler</c> (denoising diffusion probabilistic models, arXiv 2006.11239), as
/// one-step DMD PixArt models ship it (PixArt-α DMD: <c>timesteps=[400]</c>, guidance 1, one step; diffusers'
/// pipeline then returns <c>step(...).pred_original_sample</c>: <see cref="PredOriginalSample"/> after <see cref="Step"/>,
/// or <see cref="StepWithOutput"/>).
/// Tables are float32 on the CPU and every per-step scalar is a 0-dim float32 tensor computed with the same torch
/// ops as diffusers; <see cref="NoiseSchedule"/> builds the betas (no second copy of the schedules here).
/// <para>
/// The posterior variance noise is drawn for every step with t &gt; 0 from the pipeline's generator through
/// <see cref="NoiseSource"/>, as diffusers' <c>randn_tensor(model_output.shape, generator=generator)</c> — also on a
/// one-step run, where it is scaled by √1e-20 and changes nothing but the generator's position.
/// </para>
/// </summary>
internal sealed class DDPMScheduler : IScheduler
{
    public SchedulerConfig Config { get; }
    /// <summary>β, ᾱ (float32, CPU, num_train_timesteps values).</summary>
    public Tensor Betas { get; }
    public Tensor AlphasCumprod { get; }
    /// <summary>ᾱ_t for the live previews' x̂₀ (<see cref="IScheduler.AlphaProd"/>).</summary>
    public double? AlphaProd(long timestep) { using var a = AlphasCumprod[timestep]; return a.item<float>(); }
    /// <summary>ᾱ before the first timestep (diffusers' <c>self.one</c>).</summary>
    private readonly Tensor _one = torch.tensor(1.0f);

    /// <summary>"fixed_small" (default), "fixed_small_log", "fixed_large", "fixed_large_log", "learned" or "learned_range".</summary>
    public string VarianceType { get; }
    public bool ClipSample { get; }
    public string TimestepSpacing { get; }

    public string ClassName => "DDPMScheduler";
    public double InitNoiseSigma => 1.0;
    /// <summary>
    /// diffusers' PixArt pipeline defaults (20 steps, guidance 4.5): the pipeline does not special-case DDPM. One-step
    /// DMD models are run with <c>timesteps=[400]</c> and guidance 1 by their model card, which the caller must ask for.
    /// </summary>
    public int DefaultSteps => 20;
    public double DefaultGuidance => 4.5;
    public bool AcceptsCustomTimesteps => true;
    public int Order => 1;

    /// <summary>Set by <see cref="SetTimesteps"/> with a step count; left as it was for custom timesteps (as diffusers).</summary>
    public int? NumInferenceSteps { get; private set; }
    /// <summary>The timesteps to run, in order (before <see cref="SetTimesteps"/>: num_train_timesteps−1 … 0).</summary>
    public long[] Timesteps { get; private set; }
    public bool CustomTimesteps { get; private set; }

    public DDPMScheduler(SchedulerConfig config)
    {
        Config = config ?? throw new ArgumentNullException(nameof(config));
        Betas = NoiseSchedule.Betas(config, lcm: false, allowSigmoid: true);
        AlphasCumprod = NoiseSchedule.AlphasCumprod(Betas);
        VarianceType = config.VarianceType ?? "fixed_small";
        ClipSample = config.ClipSampleFor(ddpm: true);
        TimestepSpacing = config.TimestepSpacingFor(lcm: true);   // "leading", as LCM's
        if (config.PredictionType is not ("epsilon" or "sample" or "v_prediction"))
            throw new ArgumentException(
                $"prediction_type given as {config.PredictionType} must be one of `epsilon`, `sample` or `v_prediction`  for the DDPMScheduler.");
        Timesteps = Enumerable.Range(0, config.NumTrainTimesteps).Reverse().Select(t => (long)t).ToArray();
    }

    /// <summary>From <c>scheduler_config.json</c> (the file or its folder); keys of other schedulers are ignored.</summary>
    public static DDPMScheduler FromConfig(string path) => new(SchedulerConfig.Load(path));

    /// <summary>diffusers' DDPMScheduler has no begin index: it finds its place from the timestep's value. No-op.</summary>
    public void SetBeginIndex(int beginIndex = 0) { }

    /// <summary>Identity: DDPM does not scale the model input.</summary>
    public Tensor ScaleModelInput(Tensor sample) => sample;

    /// <summary>
    /// diffusers <c>set_timesteps(num_inference_steps, device, timesteps)</c>. Spacings (Table 2 of arXiv 2305.08891):
    /// "linspace" = round(linspace(0, T−1, n)) reversed; "leading" = arange(n)·(T // n) reversed + steps_offset;
    /// "trailing" = round(arange(T, 0, −T/n)) − 1. Custom <paramref name="timesteps"/> must be strictly descending and
    /// start below num_train_timesteps. diffusers' ValueErrors are <see cref="ArgumentException"/>s with its texts.
    /// </summary>
    public void SetTimesteps(int? numInferenceSteps, IReadOnlyList<int>? timesteps = null)
    {
        int numTrain = Config.NumTrainTimesteps;
        if (numInferenceSteps is not null && timesteps is not null)
            throw new ArgumentException("Can only pass one of `num_inference_steps` or `custom_timesteps`.", nameof(timesteps));
        if (numInferenceSteps is null && timesteps is null)
            throw new ArgumentException("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.", nameof(numInferenceSteps));

        if (timesteps is not null)
        {
            NoiseSchedule.CheckCustomTimesteps(timesteps, numTrain);
            if (timesteps[^1] < 0)
                throw new ArgumentException($"`timesteps` must not be negative (got {timesteps[^1]}).", nameof(timesteps));   // diffusers: index error in step
            Timesteps = timesteps.Select(t => (long)t).ToArray();
            CustomTimesteps = true;
            return;
        }

        int n = numInferenceSteps!.Value;
        if (n > numTrain)
            throw new ArgumentException(
                $"`num_inference_steps`: {n} cannot be larger than `self.config.train_timesteps`: {numTrain} as the unet model " +
                $"trained with this scheduler can only handle maximal {numTrain} timesteps.", nameof(numInferenceSteps));
        if (n < 1)
            throw new ArgumentException($"`num_inference_steps` must be positive, got {n}.", nameof(numInferenceSteps));   // diffusers: ZeroDivisionError
        NumInferenceSteps = n;
        CustomTimesteps = false;
        long[] result;
        switch (TimestepSpacing)
        {
            case "linspace":
                {
                    // np.linspace(0, T−1, n) is i·step (float64) with the last value exactly T−1; np.round is half-to-even.
                    double step = n > 1 ? (double)(numTrain - 1) / (n - 1) : 0;
                    result = Enumerable.Range(0, n)
                        .Select(i => (long)Math.Round(n > 1 && i == n - 1 ? numTrain - 1 : i * step, MidpointRounding.ToEven))
                        .Reverse().ToArray();
                    break;
                }
            case "leading":
                {
                    long stepRatio = numTrain / n;
                    result = Enumerable.Range(0, n).Select(i => i * stepRatio + Config.StepsOffset).Reverse().ToArray();
                    break;
                }
            case "trailing":
                {
                    // np.arange(T, 0, −r) with a float step: ceil(−T / −r) values T − i·r (the count can exceed n by one
                    // when T/r rounds up, as numpy's does).
                    double stepRatio = (double)numTrain / n;
                    long count = (long)Math.Ceiling((0.0 - numTrain) / -stepRatio);
                    result = new long[count];
                    for (long i = 0; i < count; i++)
                        result[i] = (long)Math.Round(numTrain + i * -stepRatio, MidpointRounding.ToEven) - 1;
                    break;
                }
            default:
                throw new ArgumentException(
                    $"{TimestepSpacing} is not supported. Please make sure to choose one of 'linspace', 'leading' or 'trailing'.");
        }
        Timesteps = result;
    }

    /// <summary>
    /// diffusers' <c>previous_timestep</c>: the next entry of a custom schedule (−1 after the last), otherwise
    /// t − T // n (n = num_train_timesteps before <see cref="SetTimesteps"/>).
    /// </summary>
    public long PreviousTimestep(long timestep)
    {
        if (CustomTimesteps)
        {
            int index = Array.IndexOf(Timesteps, timestep);
            if (index < 0)
                throw new ArgumentException($"Timestep {timestep} is not in the scheduler's timesteps [{string.Join(", ", Timesteps)}].", nameof(timestep));
            return index == Timesteps.Length - 1 ? -1 : Timesteps[index + 1];
        }
        int n = NumInferenceSteps is > 0 ? NumInferenceSteps.Value : Config.NumTrainTimesteps;
        return timestep - Config.NumTrainTimesteps / n;
    }

    /// <summary>
    /// The last <see cref="Step"/>'s pred_original_sample (x̂₀, clipped/thresholded as configured). It belongs to
    /// the dispose scope that call ran in, like the returned prev_sample; null before the first step.
    /// </summary>
    public Tensor? PredOriginalSample { get; private set; }

    /// <summary>x_t → x_{t−1} (prev_sample); x̂₀ is kept in <see cref="PredOriginalSample"/>.</summary>
    public Tensor Step(Tensor modelOutput, long timestep, Tensor sample, NoiseSource? noise)
    {
        var output = StepWithOutput(modelOutput, timestep, sample, noise);
        PredOriginalSample = output.PredOriginalSample;
        return output.PrevSample;
    }

    /// <summary>
    /// One DDPM step (diffusers' <c>step</c>): x̂₀ from the model output (clipped or thresholded), the posterior mean
    /// μ̃_t(x_t, x̂₀) of formula (7), plus σ_t·z for t &gt; 0 with z drawn from <paramref name="noise"/>.
    /// Returns prev_sample and pred_original_sample.
    /// </summary>
    /// <param name="modelOutput">[B, C, …] predicted noise / sample / v; [B, 2C, …] with the variance channels for
    /// variance_type "learned" or "learned_range"</param>
    public DDPMSchedulerOutput StepWithOutput(Tensor modelOutput, long timestep, Tensor sample, NoiseSource? noise)
    {
        if (timestep < 0 || timestep >= Config.NumTrainTimesteps)
            throw new ArgumentException($"Timestep {timestep} is outside [0, {Config.NumTrainTimesteps}).", nameof(timestep));
        using var scope = torch.NewDisposeScope();
        long t = timestep;
        long prevT = PreviousTimestep(t);

        Tensor? predictedVariance = null;
        if (modelOutput.shape[1] == sample.shape[1] * 2 && VarianceType is "learned" or "learned_range")
        {
            var halves = modelOutput.split(sample.shape[1], 1);
            modelOutput = halves[0];
            predictedVariance = halves[1];
        }
        if (!modelOutput.shape.SequenceEqual(sample.shape))
            throw new ArgumentException(
                $"model_output has shape [{string.Join(", ", modelOutput.shape)}] but the sample has [{string.Join(", ", sample.shape)}].", nameof(modelOutput));

        // 1. ᾱ_t, ᾱ_{t_prev}, β products (0-dim float32, on the sample's device)
        var dev = sample.device;
        var alphaProdT = AlphasCumprod[t].to(dev);
        var alphaProdTPrev = (prevT >= 0 ? AlphasCumprod[prevT] : _one).to(dev);
        var betaProdT = 1 - alphaProdT;
        var betaProdTPrev = 1 - alphaProdTPrev;
        var currentAlphaT = alphaProdT / alphaProdTPrev;
        var currentBetaT = 1 - currentAlphaT;

        // 2. predicted x₀, formula (15) ("** 0.5" is sqrt in PyTorch's pow kernel)
        var predOriginal = Config.PredictionType switch
        {
            "epsilon" => (sample - betaProdT.sqrt() * modelOutput) / alphaProdT.sqrt(),
            "sample" => modelOutput.alias(),
            _ => alphaProdT.sqrt() * sample - betaProdT.sqrt() * modelOutput,   // v_prediction (checked in the constructor)
        };

        // 3. clip or threshold x₀
        if (Config.Thresholding)
            predOriginal = NoiseSchedule.ThresholdSample(predOriginal, Config.DynamicThresholdingRatio, Config.SampleMaxValue);
        else if (ClipSample)
            predOriginal = predOriginal.clamp(-Config.ClipSampleRange, Config.ClipSampleRange);

        // 4-5. posterior mean, formula (7): μ̃ = √ᾱ_{t−1}·β_t/(1−ᾱ_t)·x̂₀ + √α_t·(1−ᾱ_{t−1})/(1−ᾱ_t)·x_t
        var predOriginalCoeff = alphaProdTPrev.sqrt() * currentBetaT / betaProdT;
        var currentSampleCoeff = currentAlphaT.sqrt() * betaProdTPrev / betaProdT;
        var prevSample = predOriginalCoeff * predOriginal + currentSampleCoeff * sample;

        // 6. add σ_t·z (never at t = 0)
        if (t > 0)
        {
            var z = NoiseSource.Randn(noise, modelOutput.shape, modelOutput.dtype, modelOutput.device);
            var variance = GetVariance(t, predictedVariance, dev);
            Tensor added = VarianceType switch
            {
                "fixed_small_log" => variance * z,
                "learned_range" => (0.5 * variance).exp() * z,
                _ => variance.sqrt() * z,
            };
            prevSample = prevSample + added;
        }
        return new DDPMSchedulerOutput(prevSample.MoveToOuterDisposeScope(), predOriginal.MoveToOuterDisposeScope());
    }

    /// <summary>diffusers' <c>_get_variance</c>: β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t)·β_t clamped at 1e-20, or its variants.</summary>
    public Tensor GetVariance(long t, Tensor? predictedVariance = null, Device? device = null)
    {
        using var scope = torch.NewDisposeScope();
        long prevT = PreviousTimestep(t);
        var dev = predictedVariance?.device ?? device ?? CPU;
        var alphaProdT = AlphasCumprod[t].to(dev);
        var alphaProdTPrev = (prevT >= 0 ? AlphasCumprod[prevT] : _one).to(dev);
        var currentBetaT = 1 - alphaProdT / alphaProdTPrev;
        // For t > 0 the posterior variance β̃_t of formulas (6)-(7); always logged somewhere, so kept above 0.
        var variance = ((1 - alphaProdTPrev) / (1 - alphaProdT) * currentBetaT).clamp_min(1e-20);
        Tensor result;
        switch (VarianceType)
        {
            case "fixed_small_log":   // rl-diffuser, arXiv 2205.09991
                result = (0.5 * variance.log()).exp();
                break;
            case "fixed_large":
                result = currentBetaT;
                break;
            case "fixed_large_log":   // Glide max_log
                result = currentBetaT.log();
                break;
            case "learned":
                result = predictedVariance?.alias() ?? throw MissingVariance();
                break;
            case "learned_range":
                {
                    if (predictedVariance is null) throw MissingVariance();
                    var minLog = variance.log();
                    var maxLog = currentBetaT.log();
                    var frac = (predictedVariance + 1) / 2;
                    result = frac * maxLog + (1 - frac) * minLog;
                    break;
                }
            default:   // "fixed_small" (and, as diffusers, any other name)
                result = variance;
                break;
        }
        return result.MoveToOuterDisposeScope();
    }

    private ArgumentException MissingVariance() => new(
        $"variance_type '{VarianceType}' needs the model's variance channels: pass the whole model output ([B, 2·C, …]) to step(), " +
        "or set variance_type to \"fixed_small\" in scheduler_config.json.");

    /// <summary>DDPM forward noising: √ᾱ_t·x₀ + √(1−ᾱ_t)·noise, with ᾱ cast to the sample's dtype and device.</summary>
    public Tensor AddNoise(Tensor originalSamples, Tensor noise, Tensor timesteps)
    {
        using var scope = torch.NewDisposeScope();
        var alphasCumprod = AlphasCumprod.to(originalSamples.device).to(originalSamples.dtype);
        var acp = alphasCumprod.index_select(0, timesteps.to(originalSamples.device).to(ScalarType.Int64).flatten());
        var sqrtAlphaProd = acp.sqrt().flatten();
        var sqrtOneMinusAlphaProd = (1 - acp).sqrt().flatten();
        while (sqrtAlphaProd.dim() < originalSamples.dim()) sqrtAlphaProd = sqrtAlphaProd.unsqueeze(-1);
        while (sqrtOneMinusAlphaProd.dim() < originalSamples.dim()) sqrtOneMinusAlphaProd = sqrtOneMinusAlphaProd.unsqueeze(-1);
        return (sqrtAlphaProd * originalSamples + sqrtOneMinusAlphaProd * noise).MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        Betas.Dispose();
        AlphasCumprod.Dispose();
        _one.Dispose();
    }
}
