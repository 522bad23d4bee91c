using System.Globalization;
using System.Text.Json;
using PixArtSharp.Loading;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Schedulers;

/// <summary>
/// The <c>SASolverScheduler.__init__</c> arguments of diffusers v0.29.2, with its defaults. PixArt's demo builds the
/// scheduler with <c>from_config(dpm_config, …)</c>, so the DPM-Solver++ config file is read through this record:
/// DPM-only keys (solver_order, solver_type, euler_at_final, use_lu_lambdas, final_sigmas_type,
/// rescale_betas_zero_snr) are ignored, exactly as diffusers carries them over without reading them.
/// </summary>
internal sealed record SASolverConfig
{
    public int NumTrainTimesteps { get; init; } = 1000;
    public double BetaStart { get; init; } = 0.0001;
    public double BetaEnd { get; init; } = 0.02;
    /// <summary>"linear", "scaled_linear" or "squaredcos_cap_v2".</summary>
    public string BetaSchedule { get; init; } = "linear";
    public double[]? TrainedBetas { get; init; }
    public int PredictorOrder { get; init; } = 2;
    public int CorrectorOrder { get; init; } = 2;
    /// <summary>"epsilon", "sample" or "v_prediction".</summary>
    public string PredictionType { get; init; } = "epsilon";
    public bool Thresholding { get; init; }
    public double DynamicThresholdingRatio { get; init; } = 0.995;
    public double SampleMaxValue { get; init; } = 1.0;
    /// <summary>"data_prediction" or "noise_prediction".</summary>
    public string AlgorithmType { get; init; } = "data_prediction";
    public bool LowerOrderFinal { get; init; } = true;
    public bool UseKarrasSigmas { get; init; }
    public double LambdaMinClipped { get; init; } = double.NegativeInfinity;
    /// <summary>null, "learned" or "learned_range".</summary>
    public string? VarianceType { get; init; }
    /// <summary>"linspace", "leading" or "trailing".</summary>
    public string TimestepSpacing { get; init; } = "linspace";
    public int StepsOffset { get; init; }
}

/// <summary>
/// Port of diffusers v0.29.2 <c>SASolverScheduler</c> (schedulers/scheduling_sasolver.py): SA-Solver, a stochastic
/// Adams predictor–corrector for the diffusion SDE (arXiv 2309.05019). Each <see cref="Step(Tensor, long, Tensor, Generator?)"/> first corrects the
/// incoming sample (stochastic Adams–Moulton, i &gt; 0), then draws one randn of the model output's shape, then
/// predicts the next sample (stochastic Adams–Bashforth). The scheduler keeps that history (previous data
/// predictions, the last corrected sample and its noise) between steps, so steps must run in order.
///
/// Precision follows diffusers: the noise tables are float32 torch tensors; every per-step coefficient is a
/// float32 0-d tensor op in diffusers and is computed here in C# <c>float</c> in the same operation order (exp/log
/// may differ from torch's SLEEF by an ulp); tensor updates run in the tensors' dtype.
/// </summary>
internal sealed class SASolverScheduler : IScheduler
{
    public SASolverConfig Config { get; }

    /// <summary>Stochasticity per training timestep (diffusers' <c>tau_func</c>): the predictor of step i uses
    /// tau(t_i), the corrector of step i uses tau(t_{i−1}).</summary>
    public Func<long, double> TauFunc { get; }

    /// <summary>diffusers' default and PixArt's demo: <c>lambda t: 1 if 200 &lt;= t &lt;= 800 else 0</c>.</summary>
    public static readonly Func<long, double> DefaultTauFunc = t => t >= 200 && t <= 800 ? 1 : 0;

    public double InitNoiseSigma => 1.0;
    public string ClassName => "SASolverScheduler";
    /// <summary>PixArt's SA-Solver demo defaults: 25 steps, guidance 3.</summary>
    public int DefaultSteps => 25;
    public double DefaultGuidance => 3.0;
    public bool AcceptsCustomTimesteps => false;
    public int Order => 1;

    // Training tables (float32, as diffusers' torch tensors).
    public float[] AlphasCumprod { get; }
    /// <summary>ᾱ_t for the live previews' x̂₀ (<see cref="IScheduler.AlphaProd"/>).</summary>
    public double? AlphaProd(long timestep) => AlphasCumprod[timestep];
    public float[] AlphaT { get; }
    public float[] SigmaT { get; }
    public float[] LambdaT { get; }
    /// <summary>sqrt((1 − ᾱ)/ᾱ) for every training timestep (diffusers' <c>self.sigmas</c> before set_timesteps).</summary>
    public float[] SigmasTrain { get; }

    public long[] Timesteps { get; private set; }
    /// <summary>num_inference_steps + 1 values; the last is σ of timestep 0 (not 0).</summary>
    public float[] Sigmas { get; private set; }
    public int? NumInferenceSteps { get; private set; }
    public int? StepIndex { get; private set; }
    public int? BeginIndex { get; private set; }

    private readonly bool _predictX0;
    private readonly int _historyLength; // max(predictor_order, corrector_order − 1)
    private readonly Tensor?[] _modelOutputs;
    private readonly long?[] _timestepList;
    private int _lowerOrderNums;
    private Tensor? _lastSample;
    private Tensor? _lastNoise;

    /// <summary>Data (or noise) predictions of the last steps, oldest first; the last is that of the latest step.</summary>
    public IReadOnlyList<Tensor?> ModelOutputs => _modelOutputs;
    /// <summary>The sample the latest predictor started from: the corrected sample (step &gt; 0) or the input (step 0).</summary>
    public Tensor? LastSample => _lastSample;
    /// <summary>The randn the latest step drew.</summary>
    public Tensor? LastNoise => _lastNoise;
    public int ThisPredictorOrder { get; private set; }
    public int ThisCorrectorOrder { get; private set; }

    public SASolverScheduler(SASolverConfig config, Func<long, double>? tauFunc = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.AlgorithmType is not ("data_prediction" or "noise_prediction"))
            throw new ArgumentException($"algorithm_type '{config.AlgorithmType}' is not implemented for SASolverScheduler (data_prediction or noise_prediction).", nameof(config));
        if (config.PredictorOrder is < 1 or > 4)
            throw new ArgumentException($"predictor_order must be 1..4, got {config.PredictorOrder}.", nameof(config));
        if (config.CorrectorOrder is < 1 or > 4)
            throw new ArgumentException($"corrector_order must be 1..4, got {config.CorrectorOrder}.", nameof(config));
        if (config.NumTrainTimesteps is < 2 or > SchedulerConfig.MaxTrainTimesteps)
            throw new ArgumentException($"num_train_timesteps must be 2..{SchedulerConfig.MaxTrainTimesteps}, got {config.NumTrainTimesteps}.", nameof(config));
        Config = config;
        TauFunc = tauFunc ?? DefaultTauFunc;
        _predictX0 = config.AlgorithmType == "data_prediction";

        // 1. Noise tables, float32 as diffusers' torch tensors: the betas and ᾱ = cumprod(1 − β) every scheduler uses.
        using (var betas = NoiseSchedule.Betas(config.BetaSchedule, config.BetaStart, config.BetaEnd, config.NumTrainTimesteps, config.TrainedBetas))
        using (var alphasCumprod = NoiseSchedule.AlphasCumprod(betas))
            AlphasCumprod = alphasCumprod.data<float>().ToArray();
        AlphaT = AlphasCumprod.Select(MathF.Sqrt).ToArray();
        SigmaT = AlphasCumprod.Select(a => MathF.Sqrt(1f - a)).ToArray();
        SigmasTrain = AlphasCumprod.Select(a => MathF.Sqrt((1f - a) / a)).ToArray();
        using (var alphaT = torch.tensor(AlphaT))
        using (var sigmaT = torch.tensor(SigmaT))
        using (var lambdaT = alphaT.log() - sigmaT.log()) // torch's vectorised log, as diffusers
            LambdaT = lambdaT.data<float>().ToArray();

        // 2. Settable values before set_timesteps: timesteps 999..0, sigmas = the training sigmas.
        Timesteps = Enumerable.Range(0, config.NumTrainTimesteps).Reverse().Select(t => (long)t).ToArray();
        Sigmas = SigmasTrain;
        _historyLength = Math.Max(config.PredictorOrder, config.CorrectorOrder - 1);
        _modelOutputs = new Tensor?[_historyLength];
        _timestepList = new long?[_historyLength];
    }

    /// <summary>
    /// PixArt's demo: <c>SASolverScheduler.from_config(dpm_config, algorithm_type='data_prediction',
    /// tau_func=lambda t: 1 if 200 &lt;= t &lt;= 800 else 0, predictor_order=2, corrector_order=2)</c>.
    /// <paramref name="schedulerConfigJsonPath"/> is a <c>scheduler_config.json</c> (typically DPM-Solver++'s) or its folder;
    /// the keyword arguments override the file's values as in <c>from_config</c>.
    /// </summary>
    public static SASolverScheduler FromConfigFile(string schedulerConfigJsonPath, string algorithmType = "data_prediction",
        int predictorOrder = 2, int correctorOrder = 2, Func<long, double>? tauFunc = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(schedulerConfigJsonPath);
        var config = LoadConfig(schedulerConfigJsonPath) with
        {
            AlgorithmType = algorithmType,
            PredictorOrder = predictorOrder,
            CorrectorOrder = correctorOrder,
        };
        return SchedulerConfig.Build(schedulerConfigJsonPath, () => new SASolverScheduler(config, tauFunc));
    }

    /// <summary>Reads a scheduler_config.json into <see cref="SASolverConfig"/> (unknown keys ignored).</summary>
    public static SASolverConfig LoadConfig(string path)
    {
        string file = Directory.Exists(path) ? Path.Combine(path, "scheduler_config.json") : path;
        // The shared keys (num_train_timesteps, betas, …) are checked as for every scheduler, naming the file.
        SchedulerConfig.Load(file);
        // Python's json writes bare -Infinity (lambda_min_clipped); ConfigJson quotes such literals for System.Text.Json.
        string json = ConfigJson.QuoteNonFiniteLiterals(ModelFiles.ReadAllText(file, "scheduler config"));
        try
        {
            return JsonSerializer.Deserialize<SASolverConfig>(json, ConfigJson.Options)
                   ?? throw new WeightFileException($"{file} is empty or null; download the model again.");
        }
        catch (JsonException e)
        {
            throw new WeightFileException($"{file} is not a valid config ({e.Message}); download the model again.", e);
        }
    }

    public void SetBeginIndex(int beginIndex = 0) => BeginIndex = beginIndex;

    /// <summary>
    /// diffusers <c>set_timesteps</c>. SA-Solver has no custom-timesteps path in v0.29.2, so
    /// <paramref name="timesteps"/> must be null (the pipeline's retrieve_timesteps raises likewise).
    /// </summary>
    public void SetTimesteps(int? numInferenceSteps, IReadOnlyList<int>? timesteps = null)
    {
        if (timesteps != null)
            throw new ArgumentException("SASolverScheduler does not support custom timestep schedules; pass numInferenceSteps.", nameof(timesteps));
        if (numInferenceSteps is not int n || n < 1)
            throw new ArgumentException($"numInferenceSteps must be a positive integer, got {numInferenceSteps?.ToString(CultureInfo.InvariantCulture) ?? "null"}.", nameof(numInferenceSteps));
        int numTrain = Config.NumTrainTimesteps;

        // 1. Clip the minimum of lambda(t) (critical for squaredcos_cap_v2):
        //    clipped_idx = searchsorted(flip(lambda_t), lambda_min_clipped); last_timestep = T − clipped_idx.
        float clip = (float)Config.LambdaMinClipped;
        int clippedIdx = 0;
        for (int j = LambdaT.Length - 1; j >= 0 && LambdaT[j] < clip; j--) clippedIdx++;
        int lastTimestep = numTrain - clippedIdx;

        // 2. Timesteps (Table 2 of arXiv 2305.08891).
        double[] ts;
        switch (Config.TimestepSpacing)
        {
            case "linspace":
                {
                    // np.linspace(0, last_timestep − 1, n + 1).round()[::-1][:-1]
                    var lin = NpLinspace(0, lastTimestep - 1, n + 1);
                    ts = lin.Select(v => Math.Round(v, MidpointRounding.ToEven)).Reverse().Take(n).ToArray();
                    break;
                }
            case "leading":
                {
                    long stepRatio = lastTimestep / (n + 1);
                    ts = Enumerable.Range(0, n + 1).Select(i => (double)(i * stepRatio)).Reverse().Take(n)
                        .Select(v => v + Config.StepsOffset).ToArray();
                    break;
                }
            case "trailing":
                {
                    // np.arange(last_timestep, 0, −T/n).round() − 1
                    double stepRatio = (double)numTrain / n;
                    ts = NpArange(lastTimestep, 0, -stepRatio).Select(v => Math.Round(v, MidpointRounding.ToEven) - 1).ToArray();
                    break;
                }
            default:
                throw new ArgumentException($"timestep_spacing '{Config.TimestepSpacing}' is not supported; choose 'linspace', 'leading' or 'trailing'.");
        }

        // 3. Sigmas: the training sigmas at the timesteps plus σ of timestep 0 (float32).
        float[] sigmas;
        if (Config.UseKarrasSigmas)
        {
            var logSigmas = SigmasTrain.Select(s => MathF.Log(s)).ToArray(); // np.log on a float32 array
            // in_sigmas = flip(training sigmas): σ_min = σ(0), σ_max = σ(T−1).
            var karras = ConvertToKarras(SigmasTrain[0], SigmasTrain[^1], n);
            ts = karras.Select(s => Math.Round(SigmaToT(s, logSigmas), MidpointRounding.ToEven)).ToArray();
            sigmas = karras.Append(karras[^1]).Select(s => (float)s).ToArray();
        }
        else
        {
            sigmas = ts.Select(t => (float)NpInterp(t, SigmasTrain)).Append(SigmasTrain[0]).ToArray();
        }

        Sigmas = sigmas;
        Timesteps = ts.Select(t => (long)t).ToArray();
        NumInferenceSteps = Timesteps.Length;
        ResetHistory();
        StepIndex = null;
        BeginIndex = null;
    }

    /// <summary>Identity: SA-Solver does not scale the model input.</summary>
    public Tensor ScaleModelInput(Tensor sample, long timestep) => sample;

    /// <summary>
    /// One SA-Solver step (diffusers <c>step</c>): corrector (step &gt; 0), one randn draw, predictor. Returns prev_sample.
    /// The noise is drawn in float32 from <paramref name="generator"/> (on the generator's device; the default
    /// generator of the sample's device when null) and then cast to the model output's dtype and device.
    /// After the call, <see cref="ModelOutputs"/>[^1] is this step's x0 prediction, <see cref="LastSample"/> the
    /// (corrected) sample the predictor started from and <see cref="LastNoise"/> the draw.
    /// </summary>
    public Tensor Step(Tensor modelOutput, long timestep, Tensor sample, torch.Generator? generator = null) =>
        Step(modelOutput, timestep, sample, NoiseSource.Of(generator));

    /// <summary>As <see cref="Step(Tensor, long, Tensor, torch.Generator?)"/>, drawing from <paramref name="noiseSource"/>.</summary>
    public Tensor Step(Tensor modelOutput, long timestep, Tensor sample, NoiseSource? noiseSource)
    {
        ArgumentNullException.ThrowIfNull(modelOutput);
        ArgumentNullException.ThrowIfNull(sample);
        if (NumInferenceSteps == null)
            throw new InvalidOperationException("Number of inference steps is not set; call SetTimesteps after creating the scheduler.");
        if (!modelOutput.shape.SequenceEqual(sample.shape) && Config.VarianceType is not ("learned" or "learned_range"))
            throw new ArgumentException($"modelOutput shape [{string.Join(",", modelOutput.shape)}] differs from sample shape [{string.Join(",", sample.shape)}].", nameof(modelOutput));

        StepIndex ??= BeginIndex ?? IndexForTimestep(timestep);
        int stepIndex = StepIndex.Value;
        if (stepIndex >= NumInferenceSteps)
            throw new InvalidOperationException($"All {NumInferenceSteps} steps have run; call SetTimesteps again.");

        using var scope = torch.NewDisposeScope();

        // 1. Data prediction x0 (or noise prediction) at sigmas[step_index].
        var modelOutputConvert = ConvertModelOutput(modelOutput, sample);

        // 2. SA-Corrector on the incoming sample, with tau of the previous step's timestep
        //    (timestep_list is shifted only afterwards).
        bool useCorrector = stepIndex > 0 && _lastSample is not null;
        if (useCorrector)
        {
            double tauC = TauFunc(_timestepList[^1] ?? throw new InvalidOperationException("timestep history is empty"));
            sample = StochasticAdamsMoultonUpdate(modelOutputConvert, _lastSample!, _lastNoise!, ThisCorrectorOrder, tauC);
        }

        // 3. Shift the history.
        _modelOutputs[0]?.Dispose(); // the oldest prediction leaves the history
        for (int i = 0; i < _historyLength - 1; i++)
        {
            _modelOutputs[i] = _modelOutputs[i + 1];
            _timestepList[i] = _timestepList[i + 1];
        }
        _modelOutputs[^1] = modelOutputConvert.DetachFromDisposeScope();
        _timestepList[^1] = timestep;

        // 4. One randn per step, always (also at the last step and where tau = 0), before the predictor.
        var noise = NoiseSource.Randn(noiseSource, modelOutput.shape, modelOutput.dtype, modelOutput.device);

        // 5. Orders: lower at the end (lower_order_final) and during warm-up.
        int thisPredictorOrder = Config.PredictorOrder, thisCorrectorOrder = Config.CorrectorOrder;
        if (Config.LowerOrderFinal)
        {
            thisPredictorOrder = Math.Min(Config.PredictorOrder, Timesteps.Length - stepIndex);
            thisCorrectorOrder = Math.Min(Config.CorrectorOrder, Timesteps.Length - stepIndex + 1);
        }
        ThisPredictorOrder = Math.Min(thisPredictorOrder, _lowerOrderNums + 1);
        ThisCorrectorOrder = Math.Min(thisCorrectorOrder, _lowerOrderNums + 2);

        // The caller owns `sample` when no correction ran; hold our own handle to it.
        _lastSample?.Dispose();
        _lastSample = (useCorrector ? sample : sample.alias()).DetachFromDisposeScope();
        _lastNoise?.Dispose();
        _lastNoise = noise.DetachFromDisposeScope();

        // 6. SA-Predictor with tau of this step's timestep.
        double tauP = TauFunc(timestep);
        var prevSample = StochasticAdamsBashforthUpdate(_lastSample, _lastNoise, ThisPredictorOrder, tauP);

        if (_lowerOrderNums < _historyLength) _lowerOrderNums++;
        StepIndex = stepIndex + 1;
        return prevSample.MoveToOuterDisposeScope();
    }

    /// <summary>DDPM <c>add_noise</c>: sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise, ᾱ cast to the samples' dtype.</summary>
    public Tensor AddNoise(Tensor originalSamples, Tensor noise, Tensor timesteps)
    {
        ArgumentNullException.ThrowIfNull(originalSamples);
        ArgumentNullException.ThrowIfNull(noise);
        ArgumentNullException.ThrowIfNull(timesteps);
        using var scope = torch.NewDisposeScope();
        var acp = torch.tensor(AlphasCumprod, device: originalSamples.device).to(originalSamples.dtype);
        var t = timesteps.to(ScalarType.Int64, originalSamples.device);
        var sqrtAlphaProd = acp[t].pow(0.5).flatten();
        while (sqrtAlphaProd.dim() < originalSamples.dim()) sqrtAlphaProd = sqrtAlphaProd.unsqueeze(-1);
        var sqrtOneMinusAlphaProd = (1.0 - acp[t]).pow(0.5).flatten();
        while (sqrtOneMinusAlphaProd.dim() < originalSamples.dim()) sqrtOneMinusAlphaProd = sqrtOneMinusAlphaProd.unsqueeze(-1);
        var noisy = sqrtAlphaProd * originalSamples + sqrtOneMinusAlphaProd * noise;
        return noisy.MoveToOuterDisposeScope();
    }

    public void Dispose() => ResetHistory();

    // ---------------------------------------------------------------------------------------------------------

    private void ResetHistory()
    {
        var seen = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < _modelOutputs.Length; i++)
        {
            if (_modelOutputs[i] is { } m && seen.Add(m)) m.Dispose();
            _modelOutputs[i] = null;
        }
        // diffusers does not reset timestep_list in set_timesteps; only its last entry is ever read, after being set.
        _lastSample?.Dispose();
        _lastSample = null;
        _lastNoise?.Dispose();
        _lastNoise = null;
        _lowerOrderNums = 0;
    }

    private int IndexForTimestep(long timestep)
    {
        var candidates = Enumerable.Range(0, Timesteps.Length).Where(i => Timesteps[i] == timestep).ToList();
        // The very first step takes the second match if the timestep repeats (img2img), else the only one.
        if (candidates.Count == 0) return Timesteps.Length - 1;
        return candidates.Count > 1 ? candidates[1] : candidates[0];
    }

    // α_t = 1/sqrt(σ²+1), σ_t = σ·α_t, λ = log α_t − log σ_t, all float32 as diffusers' 0-d tensors.
    private static (float Alpha, float Sigma) SigmaToAlphaSigmaT(float sigma)
    {
        float alpha = 1f / MathF.Sqrt(sigma * sigma + 1f);
        return (alpha, sigma * alpha);
    }

    private float LambdaAt(int index)
    {
        var (a, s) = SigmaToAlphaSigmaT(Sigmas[index]);
        return MathF.Log(a) - MathF.Log(s);
    }

    private Tensor ConvertModelOutput(Tensor modelOutput, Tensor sample)
    {
        var (alphaT, sigmaT) = SigmaToAlphaSigmaT(Sigmas[StepIndex!.Value]);
        bool learned = Config.VarianceType is "learned" or "learned_range";
        if (_predictX0)
        {
            Tensor x0;
            switch (Config.PredictionType)
            {
                case "epsilon":
                    // diffusers keeps the first 3 channels when the variance is learned (sic).
                    if (learned) modelOutput = modelOutput.narrow(1, 0, 3);
                    x0 = (sample - modelOutput * sigmaT) / alphaT;
                    break;
                case "sample":
                    x0 = modelOutput.alias();
                    break;
                case "v_prediction":
                    x0 = sample * alphaT - modelOutput * sigmaT;
                    break;
                default:
                    throw new ArgumentException($"prediction_type '{Config.PredictionType}' must be epsilon, sample or v_prediction for SASolverScheduler.");
            }
            if (Config.Thresholding) x0 = ThresholdSample(x0);
            return x0;
        }

        Tensor epsilon;
        switch (Config.PredictionType)
        {
            case "epsilon":
                epsilon = learned ? modelOutput.narrow(1, 0, 3) : modelOutput.alias();
                break;
            case "sample":
                epsilon = (sample - modelOutput * alphaT) / sigmaT;
                break;
            case "v_prediction":
                epsilon = modelOutput * alphaT + sample * sigmaT;
                break;
            default:
                throw new ArgumentException($"prediction_type '{Config.PredictionType}' must be epsilon, sample or v_prediction for SASolverScheduler.");
        }
        if (Config.Thresholding)
            // diffusers indexes alpha_t/sigma_t tables with the deprecated (None) timestep here and fails.
            throw new NotSupportedException("thresholding with algorithm_type noise_prediction fails in diffusers v0.29.2 and is not supported.");
        return epsilon;
    }

    /// <summary>Dynamic thresholding (Imagen), upcast to float32 for the quantile.</summary>
    private Tensor ThresholdSample(Tensor sample)
    {
        var dtype = sample.dtype;
        var shape = sample.shape;
        if (dtype is not (ScalarType.Float32 or ScalarType.Float64)) sample = sample.to(ScalarType.Float32);
        long rest = shape.Skip(1).Aggregate(1L, (a, b) => a * b);
        sample = sample.reshape(shape[0], rest);
        var abs = sample.abs();
        var s = abs.quantile(torch.tensor(Config.DynamicThresholdingRatio, dtype: sample.dtype, device: sample.device), dim: 1);
        s = s.clamp(1.0, Config.SampleMaxValue).unsqueeze(1);
        sample = sample.clamp(-s, s) / s;
        return sample.reshape(shape).to(dtype);
    }

    // ---- exponential integrals (float32 scalar arithmetic in diffusers' order) ----

    /// <summary>∫ exp(−x)·x^order dx over [start, end].</summary>
    private static float ExpNegative(int order, float start, float end)
    {
        float e = MathF.Exp(-end), d = MathF.Exp(end - start);
        return order switch
        {
            0 => e * (d - 1f),
            1 => e * ((start + 1f) * d - (end + 1f)),
            2 => e * ((start * start + 2f * start + 2f) * d - (end * end + 2f * end + 2f)),
            3 => e * ((start * start * start + 3f * (start * start) + 6f * start + 6f) * d
                      - (end * end * end + 3f * (end * end) + 6f * end + 6f)),
            _ => throw new ArgumentOutOfRangeException(nameof(order)),
        };
    }

    /// <summary>∫ exp(x(1+τ²))·x^order dx over [start, end].</summary>
    private static float ExpPositive(int order, float start, float end, double tau)
    {
        double k = 1 + tau * tau;
        float kf = (float)k;
        float ec = kf * end, sc = kf * start; // change of variable
        float a = MathF.Exp(ec), d = MathF.Exp(-(ec - sc));
        return order switch
        {
            0 => a * (1f - d) / kf,
            1 => a * ((ec - 1f) - (sc - 1f) * d) / (float)(k * k),
            2 => a * ((ec * ec - 2f * ec + 2f) - (sc * sc - 2f * sc + 2f) * d) / (float)(k * k * k),
            3 => a * ((ec * ec * ec - 3f * (ec * ec) + 6f * ec - 6f) - (sc * sc * sc - 3f * (sc * sc) + 6f * sc - 6f) * d)
                 / (float)(k * k * k * k),
            _ => throw new ArgumentOutOfRangeException(nameof(order)),
        };
    }

    /// <summary>Coefficients of the Lagrange basis polynomials through <paramref name="l"/> (highest power first).</summary>
    private static float[][] LagrangePolynomialCoefficient(int order, float[] l)
    {
        switch (order)
        {
            case 0:
                return [[1f]];
            case 1:
                return
                [
                    [1f / (l[0] - l[1]), -l[1] / (l[0] - l[1])],
                    [1f / (l[1] - l[0]), -l[0] / (l[1] - l[0])],
                ];
            case 2:
                {
                    float d1 = (l[0] - l[1]) * (l[0] - l[2]);
                    float d2 = (l[1] - l[0]) * (l[1] - l[2]);
                    float d3 = (l[2] - l[0]) * (l[2] - l[1]);
                    return
                    [
                        [1f / d1, (-l[1] - l[2]) / d1, l[1] * l[2] / d1],
                    [1f / d2, (-l[0] - l[2]) / d2, l[0] * l[2] / d2],
                    [1f / d3, (-l[0] - l[1]) / d3, l[0] * l[1] / d3],
                ];
                }
            case 3:
                {
                    float d1 = (l[0] - l[1]) * (l[0] - l[2]) * (l[0] - l[3]);
                    float d2 = (l[1] - l[0]) * (l[1] - l[2]) * (l[1] - l[3]);
                    float d3 = (l[2] - l[0]) * (l[2] - l[1]) * (l[2] - l[3]);
                    float d4 = (l[3] - l[0]) * (l[3] - l[1]) * (l[3] - l[2]);
                    return
                    [
                        [1f / d1, (-l[1] - l[2] - l[3]) / d1, (l[1] * l[2] + l[1] * l[3] + l[2] * l[3]) / d1, -l[1] * l[2] * l[3] / d1],
                    [1f / d2, (-l[0] - l[2] - l[3]) / d2, (l[0] * l[2] + l[0] * l[3] + l[2] * l[3]) / d2, -l[0] * l[2] * l[3] / d2],
                    [1f / d3, (-l[0] - l[1] - l[3]) / d3, (l[0] * l[1] + l[0] * l[3] + l[1] * l[3]) / d3, -l[0] * l[1] * l[3] / d3],
                    [1f / d4, (-l[0] - l[1] - l[2]) / d4, (l[0] * l[1] + l[0] * l[2] + l[1] * l[2]) / d4, -l[0] * l[1] * l[2] / d4],
                ];
                }
            default:
                throw new ArgumentOutOfRangeException(nameof(order));
        }
    }

    private float[] GetCoefficients(int order, float intervalStart, float intervalEnd, float[] lambdaList, double tau)
    {
        var lagrange = LagrangePolynomialCoefficient(order - 1, lambdaList);
        var coefficients = new float[order];
        for (int i = 0; i < order; i++)
        {
            float c = 0f;
            for (int j = 0; j < order; j++)
                c += lagrange[i][j] * (_predictX0
                    ? ExpPositive(order - 1 - j, intervalStart, intervalEnd, tau)
                    : ExpNegative(order - 1 - j, intervalStart, intervalEnd));
            coefficients[i] = c;
        }
        return coefficients;
    }

    /// <summary>SA-Predictor (stochastic Adams–Bashforth) from sigmas[i] to sigmas[i+1].</summary>
    private Tensor StochasticAdamsBashforthUpdate(Tensor sample, Tensor noise, int order, double tau)
    {
        int si = StepIndex!.Value;
        var (alphaT, sigmaT) = SigmaToAlphaSigmaT(Sigmas[si + 1]);
        var (alphaS0, sigmaS0) = SigmaToAlphaSigmaT(Sigmas[si]);
        float lambdaT = MathF.Log(alphaT) - MathF.Log(sigmaT);
        float lambdaS0 = MathF.Log(alphaS0) - MathF.Log(sigmaS0);
        float h = lambdaT - lambdaS0;
        var lambdaList = Enumerable.Range(0, order).Select(i => LambdaAt(si - i)).ToArray();
        var gc = GetCoefficients(order, lambdaS0, lambdaT, lambdaList, tau);

        double tau2 = tau * tau, k = 1 + tau2;
        float kf = (float)k;
        if (_predictX0 && order == 2)
        {
            // An O(h³) modification that does not change the convergence order (like UniPC); helps few-step sampling.
            float tempLambdaS = LambdaAt(si - 1);
            float term = 1.0f * MathF.Exp(kf * lambdaT)
                         * (h * h / 2f - (h * kf - 1f + MathF.Exp(kf * -h)) / (float)(k * k))
                         / (lambdaS0 - tempLambdaS);
            gc[0] += term;
            gc[1] -= term;
        }

        return Combine(sample, noise, order, gc, _modelOutputs, alphaT, sigmaT, alphaS0, sigmaS0, h, lambdaT, tau);
    }

    /// <summary>SA-Corrector (stochastic Adams–Moulton) from sigmas[i−1] to sigmas[i], using this step's x0.</summary>
    private Tensor StochasticAdamsMoultonUpdate(Tensor thisModelOutput, Tensor lastSample, Tensor lastNoise, int order, double tau)
    {
        int si = StepIndex!.Value;
        var (alphaT, sigmaT) = SigmaToAlphaSigmaT(Sigmas[si]);
        var (alphaS0, sigmaS0) = SigmaToAlphaSigmaT(Sigmas[si - 1]);
        float lambdaT = MathF.Log(alphaT) - MathF.Log(sigmaT);
        float lambdaS0 = MathF.Log(alphaS0) - MathF.Log(sigmaS0);
        float h = lambdaT - lambdaS0;
        var lambdaList = Enumerable.Range(0, order).Select(i => LambdaAt(si - i)).ToArray();
        var modelPrevList = _modelOutputs.Append(thisModelOutput).ToArray();
        var gc = GetCoefficients(order, lambdaS0, lambdaT, lambdaList, tau);

        double tau2 = tau * tau, k = 1 + tau2;
        float kf = (float)k;
        if (_predictX0 && order == 2)
        {
            float term = 1.0f * MathF.Exp(kf * lambdaT)
                         * (h / 2f - (h * kf - 1f + MathF.Exp(kf * -h)) / ((float)(k * k) * h));
            gc[0] += term;
            gc[1] -= term;
        }

        return Combine(lastSample, lastNoise, order, gc, modelPrevList, alphaT, sigmaT, alphaS0, sigmaS0, h, lambdaT, tau);
    }

    /// <summary>x_t = decay·x + Σ coeff_i·model_i + noise term (the shared tail of predictor and corrector).</summary>
    private Tensor Combine(Tensor x, Tensor noise, int order, float[] gc, Tensor?[] models, float alphaT, float sigmaT,
        float alphaS0, float sigmaS0, float h, float lambdaT, double tau)
    {
        double tau2 = tau * tau, k = 1 + tau2;
        float kf = (float)k;
        Tensor? gradientPart = null;
        for (int i = 0; i < order; i++)
        {
            var m = models[models.Length - 1 - i] ?? throw new InvalidOperationException("model output history is shorter than the solver order");
            float c = _predictX0
                ? kf * sigmaT * MathF.Exp((float)-tau2 * lambdaT) * gc[i]
                : -kf * alphaT * gc[i];
            var term = m * c;
            gradientPart = gradientPart is null ? term : gradientPart + term;
        }

        float noiseScale = _predictX0
            ? sigmaT * MathF.Sqrt(1f - MathF.Exp((float)(-2 * tau2) * h))
            : (float)tau * sigmaT * MathF.Sqrt(MathF.Exp(2f * h) - 1f);
        float decay = _predictX0
            ? MathF.Exp((float)-tau2 * h) * (sigmaT / sigmaS0)
            : alphaT / alphaS0;

        var xt = x * decay + gradientPart! + noise * noiseScale;
        return xt.to(x.dtype);
    }

    // ---- tables and numpy helpers ----

    /// <summary>np.linspace(start, stop, num) in float64: start + i·step, the last value set to stop.</summary>
    private static double[] NpLinspace(double start, double stop, int num)
    {
        var y = new double[num];
        int div = num - 1;
        double step = div > 0 ? (stop - start) / div : 0;
        for (int i = 0; i < num; i++) y[i] = div > 0 ? i * step + start : start;
        if (num > 1) y[^1] = stop;
        return y;
    }

    /// <summary>np.arange(start, stop, step) for float steps: start + i·((start+step) − start).</summary>
    private static double[] NpArange(double start, double stop, double step)
    {
        int len = (int)Math.Max(0, Math.Ceiling((stop - start) / step));
        double delta = (start + step) - start;
        return Enumerable.Range(0, len).Select(i => start + i * delta).ToArray();
    }

    /// <summary>np.interp(x, arange(len(fp)), fp) (float64), clamped at both ends.</summary>
    private static double NpInterp(double x, float[] fp)
    {
        if (x <= 0) return fp[0];
        if (x >= fp.Length - 1) return fp[^1];
        int j = (int)Math.Floor(x);
        double slope = ((double)fp[j + 1] - fp[j]) / 1.0;
        return slope * (x - j) + fp[j];
    }

    /// <summary>Karras et al. (2022) noise levels, rho 7, in float64.</summary>
    private static double[] ConvertToKarras(double sigmaMin, double sigmaMax, int n)
    {
        const double rho = 7.0;
        var ramp = NpLinspace(0, 1, n);
        double minInvRho = Math.Pow(sigmaMin, 1 / rho), maxInvRho = Math.Pow(sigmaMax, 1 / rho);
        return ramp.Select(r => Math.Pow(maxInvRho + r * (minInvRho - maxInvRho), rho)).ToArray();
    }

    /// <summary>EulerDiscreteScheduler._sigma_to_t: interpolate log σ in the float32 log-sigma table.</summary>
    private static double SigmaToT(double sigma, float[] logSigmas)
    {
        double logSigma = Math.Log(Math.Max(sigma, 1e-10));
        // dists = log_sigma − log_sigmas (numpy 1.x: float32, the scalar is cast); low = last index with dist ≥ 0.
        int count = 0, lowIdx = 0, best = 0;
        for (int j = 0; j < logSigmas.Length; j++)
        {
            if ((float)logSigma - logSigmas[j] >= 0) count++;
            if (count > best) { best = count; lowIdx = j; }
        }
        lowIdx = Math.Min(lowIdx, logSigmas.Length - 2);
        int highIdx = lowIdx + 1;
        double low = logSigmas[lowIdx], high = logSigmas[highIdx];
        double w = Math.Clamp((low - logSigma) / (low - high), 0, 1);
        return (1 - w) * lowIdx + w * highIdx;
    }
}
