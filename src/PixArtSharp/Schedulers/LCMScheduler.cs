using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Schedulers;

/// <summary>
/// Port of diffusers v0.29.2 <c>LCMScheduler</c> (latent consistency models), as used by PixArt-LCM.
/// Tables are float32 on the CPU; every per-step scalar is computed with float32 torch ops exactly as diffusers
/// does (the pipeline passes the timestep as an int64 tensor, so <c>timestep × timestep_scaling</c> is float32).
/// <para>
/// One-step schedules: <see cref="Step(Tensor, long, Tensor, Generator?)"/> returns <c>prev_sample == denoised</c> and draws no noise (diffusers'
/// scheduler behaviour; the fixtures' <c>lcm_1steps</c> checks it). diffusers' PixArt pipeline crashes for
/// <c>num_inference_steps == 1</c> because it reads <c>.pred_original_sample</c>; a port should simply use
/// <c>prev_sample</c>, which is the denoised sample here.
/// </para>
/// </summary>
internal sealed class LCMScheduler : IScheduler
{
    private const double SigmaData = 0.5;

    public SchedulerConfig Config { get; }
    /// <summary>β, ᾱ (float32, CPU, num_train_timesteps values).</summary>
    public Tensor Betas { get; }
    public Tensor AlphasCumprod { get; }
    /// <summary>ᾱ_t for the live previews' x̂₀ (<see cref="IScheduler.AlphaProd"/>).</summary>
    public double? AlphaProd(long timestep) { using var a = AlphasCumprod[timestep]; return a.item<float>(); }
    /// <summary>ᾱ used after the last timestep: 1 with set_alpha_to_one, else ᾱ₀ (0-dim float32).</summary>
    public Tensor FinalAlphaCumprod { get; }
    /// <summary>Standard deviation of the initial noise.</summary>
    public double InitNoiseSigma => 1.0;
    public string ClassName => "LCMScheduler";
    /// <summary>PixArt-LCM: 4 steps without guidance (the model was distilled for guidance-free sampling).</summary>
    public int DefaultSteps => 4;
    public double DefaultGuidance => 0.0;
    public bool AcceptsCustomTimesteps => true;
    void IScheduler.SetTimesteps(int? numInferenceSteps, IReadOnlyList<int>? timesteps) => SetTimesteps(numInferenceSteps, timesteps);
    Tensor IScheduler.Step(Tensor modelOutput, long timestep, Tensor sample, NoiseSource? noise)
    {
        var (prev, denoised) = Step(modelOutput, timestep, sample, noise);
        denoised.Dispose();
        return prev;
    }
    public int Order => 1;

    public int? NumInferenceSteps { get; private set; }
    /// <summary>The timesteps to run, in order (before <see cref="SetTimesteps"/>: num_train_timesteps−1 … 0).</summary>
    public long[] Timesteps { get; private set; }
    public bool CustomTimesteps { get; private set; }
    public int? StepIndex { get; private set; }
    public int? BeginIndex { get; private set; }

    public LCMScheduler(SchedulerConfig config)
    {
        Config = config ?? throw new ArgumentNullException(nameof(config));
        Betas = NoiseSchedule.Betas(config, lcm: true);
        AlphasCumprod = NoiseSchedule.AlphasCumprod(Betas);
        // For the final step there is no previous ᾱ: set_alpha_to_one fixes it to 1, otherwise ᾱ₀ is reused.
        FinalAlphaCumprod = config.SetAlphaToOne ? torch.tensor(1.0f) : AlphasCumprod[0].clone();
        Timesteps = Enumerable.Range(0, config.NumTrainTimesteps).Reverse().Select(t => (long)t).ToArray();
    }

    public static LCMScheduler FromConfig(string path)
    {
        var config = SchedulerConfig.Load(path);
        return SchedulerConfig.Build(path, () =>
        {
            if (config.OriginalInferenceSteps > config.NumTrainTimesteps)
                throw new ArgumentException($"original_inference_steps {config.OriginalInferenceSteps} is larger than num_train_timesteps {config.NumTrainTimesteps}.");
            return new LCMScheduler(config);
        });
    }

    public void SetBeginIndex(int beginIndex = 0) => BeginIndex = beginIndex;

    /// <summary>Identity: LCM does not scale the model input.</summary>
    public Tensor ScaleModelInput(Tensor sample) => sample;

    /// <summary>
    /// diffusers <c>set_timesteps(num_inference_steps, device, original_inference_steps, timesteps, strength)</c>.
    /// The LCM origin schedule is <c>arange(1, int(original_steps·strength)+1)·k − 1</c> with
    /// k = num_train_timesteps // original_steps; n of its timesteps are picked at floor(linspace(0, len, n, endpoint=False))
    /// of the reversed origin schedule. Custom <paramref name="timesteps"/> must be strictly descending and below
    /// num_train_timesteps; strength then drops the first <c>n − min(int(n·strength), n)</c> of them.
    /// diffusers' ValueErrors are <see cref="ArgumentException"/>s (its warnings are not reproduced).
    /// </summary>
    public void SetTimesteps(int? numInferenceSteps, IReadOnlyList<int>? timesteps = null, double? strength = null, int? originalInferenceSteps = null)
    {
        double s = strength ?? 1.0;
        // 0. Check inputs
        if (numInferenceSteps is null && timesteps is null)
            throw new ArgumentException("Must pass exactly one of `num_inference_steps` or `custom_timesteps`.", nameof(numInferenceSteps));
        if (numInferenceSteps is not null && timesteps is not null)
            throw new ArgumentException("Can only pass one of `num_inference_steps` or `custom_timesteps`.", nameof(timesteps));

        // 1. The LCM original training/distillation timestep schedule.
        int originalSteps = originalInferenceSteps ?? Config.OriginalInferenceSteps;
        int numTrain = Config.NumTrainTimesteps;
        if (originalSteps > numTrain)
            throw new ArgumentException(
                $"`original_steps`: {originalSteps} cannot be larger than `self.config.train_timesteps`: {numTrain} as the unet model " +
                $"trained with this scheduler can only handle maximal {numTrain} timesteps.", nameof(originalInferenceSteps));
        if (originalSteps == 0)
            throw new ArgumentException("`original_inference_steps` must not be 0 (integer division by zero).", nameof(originalInferenceSteps));
        // The skipping step parameter k from the paper (Python floor division).
        long k = FloorDiv(numTrain, originalSteps);
        // int() truncates the float64 product toward zero: 50·0.58 = 28.999999999999996 → 28.
        long originCount = Math.Max(0, (long)Math.Truncate(originalSteps * s));
        var lcmOrigin = new long[originCount];
        for (long i = 0; i < originCount; i++) lcmOrigin[i] = (i + 1) * k - 1;

        long[] result;
        if (timesteps is not null)
        {
            // 2.1 Custom timestep schedule.
            NoiseSchedule.CheckCustomTimesteps(timesteps, numTrain);
            // (diffusers only warns when the schedule does not start at num_train_timesteps−1, leaves the origin
            // schedule, or is longer than original_steps.)
            NumInferenceSteps = timesteps.Count;
            CustomTimesteps = true;
            // Apply strength (e.g. for img2img, see StableDiffusionImg2ImgPipeline.get_timesteps). As in diffusers,
            // num_inference_steps keeps the full length.
            int n = timesteps.Count;
            int initTimestep = (int)Math.Min((long)Math.Truncate(n * s), n);
            int tStart = Math.Max(n - initTimestep, 0);
            result = timesteps.Skip(tStart * Order).Select(t => (long)t).ToArray();
        }
        else
        {
            // 2.2 The standard LCM inference schedule.
            int n = numInferenceSteps!.Value;
            if (n > numTrain)
                throw new ArgumentException(
                    $"`num_inference_steps`: {n} cannot be larger than `self.config.train_timesteps`: {numTrain} as the unet model " +
                    $"trained with this scheduler can only handle maximal {numTrain} timesteps.", nameof(numInferenceSteps));
            if (n == 0)
                throw new ArgumentException("`num_inference_steps` must be positive (diffusers: integer division by zero).", nameof(numInferenceSteps));
            long skippingStep = FloorDiv(lcmOrigin.Length, n);
            if (skippingStep < 1)
                throw new ArgumentException(
                    $"The combination of `original_steps x strength`: {originalSteps} x {PyFloat(s)} is smaller than `num_inference_steps`: {n}. " +
                    $"Make sure to either reduce `num_inference_steps` to a value smaller than {originCount} or increase `strength` to a value " +
                    $"higher than {PyFloat((double)n / originalSteps)}.", nameof(numInferenceSteps));
            NumInferenceSteps = n;
            if (n > originalSteps)
                throw new ArgumentException(
                    $"`num_inference_steps`: {n} cannot be larger than `original_inference_steps`: {originalSteps} because the final " +
                    $"timestep schedule will be a subset of the `original_inference_steps`-sized initial timestep schedule.", nameof(numInferenceSteps));
            // Reverse the origin schedule and pick (approximately) evenly spaced indices:
            // np.floor(np.linspace(0, len, num=n, endpoint=False)) — numpy computes i·(len/n) in float64.
            Array.Reverse(lcmOrigin);
            double step = (double)lcmOrigin.Length / n;
            result = new long[n];
            for (int i = 0; i < n; i++) result[i] = lcmOrigin[(long)Math.Floor(i * step)];
        }
        Timesteps = result;
        StepIndex = null;
        BeginIndex = null;
    }

    /// <summary>c_skip = σ_d²/(τ² + σ_d²), c_out = τ/√(τ² + σ_d²) with τ = timestep·timestep_scaling, σ_d = 0.5, in float32.</summary>
    public (float CSkip, float COut) GetScalingsForBoundaryConditionDiscrete(long timestep)
    {
        using var scope = torch.NewDisposeScope();
        // timestep arrives as an int64 tensor: int64 × float → float32.
        var scaled = torch.tensor((float)timestep) * Config.TimestepScaling;
        // `** 2` is x·x and `** 0.5` is sqrt in PyTorch's pow kernel.
        var denom = scaled * scaled + SigmaData * SigmaData;
        var cSkip = denom.reciprocal() * (SigmaData * SigmaData);   // Python `0.25 / t` = t.reciprocal() * 0.25
        var cOut = scaled / denom.sqrt();
        return (cSkip.item<float>(), cOut.item<float>());
    }

    /// <summary>
    /// One LCM step: x₀ prediction, boundary-condition denoise, then (except on the last step) re-noise to the
    /// previous timestep with <c>randn(model_output.shape)</c> drawn in float32 from <paramref name="generator"/>
    /// (on the generator's device) and moved/cast to the denoised tensor's device and dtype.
    /// Returns (prev_sample, denoised).
    /// </summary>
    public (Tensor PrevSample, Tensor Denoised) Step(Tensor modelOutput, long timestep, Tensor sample, Generator? generator = null) =>
        Step(modelOutput, timestep, sample, NoiseSource.Of(generator));

    /// <summary>As <see cref="Step(Tensor, long, Tensor, Generator?)"/>, drawing the re-noising from <paramref name="noiseSource"/>.</summary>
    public (Tensor PrevSample, Tensor Denoised) Step(Tensor modelOutput, long timestep, Tensor sample, NoiseSource? noiseSource)
    {
        if (NumInferenceSteps is null)
            throw new InvalidOperationException("Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler");
        if (StepIndex is null) InitStepIndex(timestep);
        int stepIndex = StepIndex!.Value;
        CheckTimestep(timestep, nameof(timestep));

        using var scope = torch.NewDisposeScope();
        // 1. previous timestep (the current one on the last step)
        long prevTimestep = stepIndex + 1 < Timesteps.Length ? Timesteps[stepIndex + 1] : timestep;

        // 2. ᾱ_t, ᾱ_prev, β products (0-dim float32)
        var alphaProdT = AlphasCumprod[timestep];
        var alphaProdTPrev = prevTimestep >= 0 ? AlphasCumprod[prevTimestep] : FinalAlphaCumprod;
        var betaProdT = 1.0 - alphaProdT;
        var betaProdTPrev = 1.0 - alphaProdTPrev;

        // 3. boundary-condition scalings
        var (cSkip, cOut) = GetScalingsForBoundaryConditionDiscrete(timestep);

        // 4. predicted x₀ from the model parameterisation
        float sqrtAlpha = alphaProdT.sqrt().item<float>();
        float sqrtBeta = betaProdT.sqrt().item<float>();
        Tensor predOriginal = Config.PredictionType switch
        {
            "epsilon" => (sample - sqrtBeta * modelOutput) / sqrtAlpha,
            "sample" => modelOutput.alias(),
            "v_prediction" => sqrtAlpha * sample - sqrtBeta * modelOutput,
            _ => throw new ArgumentException(
                $"prediction_type given as {Config.PredictionType} must be one of `epsilon`, `sample` or `v_prediction` for `LCMScheduler`."),
        };

        // 5. clip or threshold x₀
        if (Config.Thresholding)
            predOriginal = NoiseSchedule.ThresholdSample(predOriginal, Config.DynamicThresholdingRatio, Config.SampleMaxValue);
        else if (Config.ClipSample)
            predOriginal = predOriginal.clamp(-Config.ClipSampleRange, Config.ClipSampleRange);

        // 6. denoise with the boundary conditions
        var denoised = cOut * predOriginal + cSkip * sample;

        // 7. inject noise z ~ N(0, I) for multistep sampling; never on the last step (nor for one-step sampling).
        Tensor prevSample;
        if (stepIndex != NumInferenceSteps.Value - 1)
        {
            var noise = NoiseSource.Randn(noiseSource, modelOutput.shape, denoised.dtype, denoised.device);
            prevSample = alphaProdTPrev.sqrt().item<float>() * denoised + betaProdTPrev.sqrt().item<float>() * noise;
        }
        else
        {
            prevSample = denoised.alias();
        }

        StepIndex = stepIndex + 1;
        return (prevSample.MoveToOuterDisposeScope(), denoised.MoveToOuterDisposeScope());
    }

    /// <summary>DDPM forward noising: √ᾱ_t·x₀ + √(1−ᾱ_t)·noise, with ᾱ cast to the sample's dtype and device.</summary>
    public Tensor AddNoise(Tensor originalSamples, Tensor noise, Tensor timesteps)
    {
        using var scope = torch.NewDisposeScope();
        var alphasCumprod = AlphasCumprod.to(originalSamples.dtype).to(originalSamples.device);
        var idx = timesteps.to(originalSamples.device).to(ScalarType.Int64).flatten();
        var acp = alphasCumprod.index_select(0, idx);
        var sqrtAlphaProd = acp.sqrt().flatten();   // `** 0.5` is sqrt in PyTorch's pow kernel
        var sqrtOneMinusAlphaProd = (1.0 - acp).sqrt().flatten();
        while (sqrtAlphaProd.dim() < originalSamples.dim()) sqrtAlphaProd = sqrtAlphaProd.unsqueeze(-1);
        while (sqrtOneMinusAlphaProd.dim() < originalSamples.dim()) sqrtOneMinusAlphaProd = sqrtOneMinusAlphaProd.unsqueeze(-1);
        return (sqrtAlphaProd * originalSamples + sqrtOneMinusAlphaProd * noise).MoveToOuterDisposeScope();
    }

    /// <summary>Index of <paramref name="timestep"/> in the schedule: the second match when it occurs twice.</summary>
    public int IndexForTimestep(long timestep)
    {
        var matches = Enumerable.Range(0, Timesteps.Length).Where(i => Timesteps[i] == timestep).Take(2).ToArray();
        if (matches.Length == 0)
            throw new ArgumentException($"Timestep {timestep} is not in the scheduler's timesteps [{string.Join(", ", Timesteps)}].", nameof(timestep));
        return matches.Length > 1 ? matches[1] : matches[0];
    }

    private void InitStepIndex(long timestep) => StepIndex = BeginIndex ?? IndexForTimestep(timestep);

    private void CheckTimestep(long timestep, string name)
    {
        if (timestep < 0 || timestep >= Config.NumTrainTimesteps)
            throw new ArgumentException($"Timestep {timestep} is outside [0, {Config.NumTrainTimesteps}).", name);
    }

    /// <summary>Python's integer floor division.</summary>
    internal static long FloorDiv(long a, long b)
    {
        long q = a / b;
        if (a % b != 0 && (a < 0) != (b < 0)) q--;
        return q;
    }

    /// <summary>Python's repr of a float (for error messages that match diffusers').</summary>
    internal static string PyFloat(double x)
    {
        if (double.IsPositiveInfinity(x)) return "inf";
        if (double.IsNegativeInfinity(x)) return "-inf";
        if (double.IsNaN(x)) return "nan";
        string r = x.ToString("R", CultureInfo.InvariantCulture).Replace("E", "e");
        if (!r.Contains('.') && !r.Contains('e')) r += ".0";
        return r;
    }

    public void Dispose()
    {
        Betas.Dispose();
        AlphasCumprod.Dispose();
        FinalAlphaCumprod.Dispose();
    }
}
