using System.Diagnostics;
using PixArtSharp.Loading;
using PixArtSharp.Models;
using PixArtSharp.Schedulers;
using PixArtSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PixArtSharp.Pipeline;

/// <summary>How a pipeline is loaded.</summary>
public sealed record PipelineOptions
{
    /// <summary>The dtype weights are held and computed in: fp32 (exact), bf16 (fast on CPUs with AVX-512-BF16), fp16.</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;
    /// <summary>Where the models run (CPU when null).</summary>
    public Device? Device { get; init; }
    /// <summary>
    /// The model card's CPU offload on a GPU: <see cref="OffloadMode.Model"/> keeps each component in CPU memory and
    /// moves it to <see cref="Device"/> for its stage (diffusers' <c>enable_model_cpu_offload</c>);
    /// <see cref="OffloadMode.Sequential"/> moves T5's and the transformer's blocks one at a time (GPUs smaller than
    /// the T5). None (the default) keeps every component on the device.
    /// </summary>
    public OffloadMode Offload { get; init; } = OffloadMode.None;
    /// <summary>A weights variant such as "fp16" (diffusion_pytorch_model.fp16.safetensors).</summary>
    public string? Variant { get; init; }
    /// <summary>Overrides the scheduler named in model_index.json: "lcm", "dpm-solver", "sa-solver" or "ddpm".</summary>
    public string? Scheduler { get; init; }
    /// <summary>
    /// Keep every component in memory once loaded (a server). When false, each component is loaded when its
    /// stage starts and freed when it ends, so only one of T5 (9.5 GB in bf16), the transformer and the VAE is
    /// resident at a time. Components are always loaded when first needed; <see cref="PixArtPipeline.Preload"/>
    /// loads them all now.
    /// </summary>
    public bool KeepLoaded { get; init; } = true;
    /// <summary>
    /// A <c>text_encoder</c> from elsewhere: a folder holding the T5's <c>config.json</c> and weights, or a pipeline
    /// folder with a <c>text_encoder/</c> inside. Null = the model folder's.
    /// </summary>
    public string? TextEncoder { get; init; }
    /// <summary>A <c>transformer</c> from elsewhere (a component folder, or a pipeline folder with <c>transformer/</c>).</summary>
    public string? Transformer { get; init; }
    /// <summary>A <c>vae</c> from elsewhere (a component folder, or a pipeline folder with <c>vae/</c>).</summary>
    public string? Vae { get; init; }
    /// <summary>
    /// LoRA adapters merged into the transformer's weights when it loads (PEFT folders or kohya files, each with its
    /// scale; several add up). They are checked against the transformer when the pipeline is built.
    /// </summary>
    public IReadOnlyList<Loading.Lora.LoraSpec>? Loras { get; init; }
    /// <summary>
    /// Decode in overlapping tiles of this many latents per side (see AutoencoderKL.DecodeTiled); 0 = always whole;
    /// null (the default) = whole unless the decode would not fit in the memory available, then tiles of 128 latents
    /// (1024 px, diffusers' tile size for the SD and SDXL VAEs).
    /// </summary>
    public int? VaeTileLatents { get; init; }
    /// <summary>
    /// Copy every weight out of its memory-mapped file at load (a long-lived process such as a server): a weight file
    /// truncated or replaced while the process runs can then never kill it with SIGBUS. Costs the weights' size in
    /// process memory and a slower load (a 1.2 GB bf16 transformer: 3.8–4.0 s instead of 0.6–1.6 s).
    /// </summary>
    public bool CopyWeights { get; init; }
    /// <summary>Prompt texts whose T5 output is kept for reuse (an LRU, <see cref="PromptEmbeddingCache"/>); 0 = off (the default; a server turns it on).</summary>
    public int PromptCacheEntries { get; init; }
}

/// <summary>What a stage event reports: the stage, and its time once it has ended.</summary>
public enum PipelineStage
{
    /// <summary>A component is being loaded (its name is in <see cref="StageEvent.Detail"/>).</summary>
    Load,
    /// <summary>T5 encodes the prompts.</summary>
    Encode,
    /// <summary>The transformer's denoising loop (steps are reported through the step callback).</summary>
    Denoise,
    /// <summary>The VAE decodes the latents.</summary>
    Decode,
}

/// <summary>A stage started (<see cref="Elapsed"/> null) or ended (its wall time).</summary>
/// <param name="Stage">Which stage.</param>
/// <param name="Detail">For a load, the component ("text encoder", "transformer", "VAE"); otherwise a short note or "".</param>
/// <param name="Elapsed">Null when the stage starts; its wall time when it ends.</param>
public sealed record StageEvent(PipelineStage Stage, string Detail, TimeSpan? Elapsed);

/// <summary>
/// diffusers' PixArt pipelines: prompt → T5 states → PixArt transformer denoising loop → VAE → image. Stages are
/// numbered as in <c>PixArtAlphaPipeline.__call__</c> (v0.29.2) so the two can be read side by side. This is the only
/// place a generation is orchestrated: the CLI, the server and the bench call <see cref="Generate"/> (or
/// <see cref="GenerateMany"/>) and follow its stage and step events. <see cref="FromPretrained"/> picks the class
/// from <c>model_index.json</c>: <see cref="PixArtAlphaPipeline"/> or <see cref="PixArtSigmaPipeline"/>, which
/// differ in defaults and in a few steps of <c>__call__</c>.
/// </summary>
public abstract class PixArtPipeline : IDisposable
{
    private readonly PipelineComponents _components;
    private readonly OffloadPolicy _offload;
    private T5EncoderModel? _textEncoder;
    private PixArtTransformer2DModel? _transformer;
    private IVae? _vae;
    private readonly PromptEmbeddingCache? _promptCache;
    private bool _warmingUp;  // WarmUp's prompt neither fills nor counts in the prompt cache

    /// <summary>Prompt texts served from the prompt cache, and texts T5 had to encode (0 with the cache off).</summary>
    public long PromptCacheHits => _promptCache?.Hits ?? 0;
    /// <inheritdoc cref="PromptCacheHits"/>
    public long PromptCacheMisses => _promptCache?.Misses ?? 0;
    /// <summary>The prompt cache (null when <see cref="PipelineOptions.PromptCacheEntries"/> is 0).</summary>
    internal PromptEmbeddingCache? PromptCache => _promptCache;

    /// <summary>The model folder the pipeline was loaded from (null when built from components alone).</summary>
    internal ModelFolder? Folder => _components.Folder;
    /// <summary>How the pipeline was loaded.</summary>
    public PipelineOptions Options { get; }
    /// <summary>The T5 tokenizer (null for a pipeline built without one: it then takes only prompt embeddings).</summary>
    internal T5Tokenizer? Tokenizer => _components.Tokenizer;
    /// <summary>The transformer's config (sizes, micro-conditions, position-embedding scale).</summary>
    internal PixArtTransformerConfig TransformerConfig => _components.TransformerConfig;
    /// <summary>The default scheduler (model_index.json's, or PipelineOptions.Scheduler). Each call runs a fresh one.</summary>
    internal IScheduler Scheduler { get; }
    /// <summary>Where the models run.</summary>
    public Device Device { get; }
    /// <summary>
    /// Things the user should know about how the model was loaded, e.g. a component without the requested
    /// variant that loads its default weights (diffusers logs the same). A front end prints them.
    /// </summary>
    public IReadOnlyList<string> Warnings => _components.Warnings;

    /// <summary>diffusers' pipeline class this one reproduces.</summary>
    public abstract string ClassName { get; }
    /// <summary><c>max_sequence_length</c>'s default in <c>__call__</c>: 120 (α) or 300 (Σ).</summary>
    public abstract int DefaultMaxSequenceLength { get; }
    /// <summary>The aspect-ratio bins <c>__call__</c> uses for this transformer's <c>sample_size</c> (diffusers raises "Invalid sample size" otherwise).</summary>
    public abstract IReadOnlyList<AspectRatioBin> AspectRatioBins { get; }
    /// <summary>Whether <c>__call__</c> builds resolution / aspect-ratio micro-conditions (α: for sample_size 128; Σ: never).</summary>
    private protected abstract bool PreparesMicroConditions { get; }
    /// <summary>
    /// α's one-step branch (<c>num_inference_steps == 1</c> → <c>step(...).pred_original_sample</c>, DMD). Σ has none:
    /// one step is an ordinary step.
    /// </summary>
    private protected abstract bool HasOneStepBranch { get; }

    /// <summary>2^(len(block_out_channels) − 1): 8 for the SD and SDXL VAEs.</summary>
    public int VaeScaleFactor => _components.VaeScaleFactor;
    /// <summary>The VAE's <c>scaling_factor</c> (0.18215 for the SD VAE, 0.13025 for the SDXL VAE Σ uses).</summary>
    public double VaeScalingFactor => _components.VaeScalingFactor;
    /// <summary>Latent sides must split into patches: the pixel multiple of a size that runs unbinned (VAE factor × patch, 16).</summary>
    public int SizeMultiple => VaeScaleFactor * PatchSize;
    /// <summary>Model defaults: LCM runs 4 steps without guidance; DPM-Solver++ 20 steps at 4.5 (diffusers' defaults).</summary>
    public int DefaultSteps => Scheduler.DefaultSteps;
    /// <summary>The guidance scale used when a request gives none.</summary>
    public double DefaultGuidance => Scheduler.DefaultGuidance;
    private int SampleSize => TransformerConfig.SampleSize!.Value;
    private int PatchSize => TransformerConfig.PatchSize!.Value;
    private int InChannels => TransformerConfig.InChannels!.Value;
    /// <summary>sample_size · vae_scale_factor: 1024 for the XL-1024 models, 2048 for Σ 2K.</summary>
    public int DefaultHeight => SampleSize * VaeScaleFactor;
    /// <summary>sample_size · vae_scale_factor.</summary>
    public int DefaultWidth => SampleSize * VaeScaleFactor;

    /// <summary>Builds a pipeline from its components (diffusers' <c>__init__</c>); models are made when first needed.</summary>
    private protected PixArtPipeline(PipelineComponents components, PipelineOptions options)
    {
        ArgumentNullException.ThrowIfNull(components);
        ArgumentNullException.ThrowIfNull(options);
        // A library user writes no setup code: libtorch is loaded (clear error, huge pages, NNPACK off) on first use.
        TorchRuntime.EnsureLoaded();
        _components = components;
        Options = options;
        Device = options.Device ?? CPU;
        _offload = new OffloadPolicy(options.Offload, Device);
        if (Device.type == DeviceType.CUDA) TorchRuntime.ConfigureCuda();
        Scheduler = components.CreateScheduler(options.Scheduler);
        if (options.PromptCacheEntries > 0) _promptCache = new PromptEmbeddingCache(options.PromptCacheEntries);
    }

    /// <summary>
    /// Opens a diffusers folder and builds the pipeline class its <c>model_index.json</c> names
    /// (<c>PixArtAlphaPipeline</c> or <c>PixArtSigmaPipeline</c>). Only configs and the tokenizer are read here;
    /// each model loads when its stage first needs it (or at <see cref="Preload"/>).
    /// </summary>
    public static PixArtPipeline FromPretrained(string folder, PipelineOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        TorchRuntime.EnsureLoaded(); // before any tensor is made: huge pages must be set before libtorch's first allocation
        options ??= new PipelineOptions();
        var components = PipelineComponents.FromFolder(ModelFolder.Open(folder), options);
        return components.Folder!.PipelineClass switch
        {
            "PixArtSigmaPipeline" => new PixArtSigmaPipeline(components, options),
            "PixArtAlphaPipeline" or "" => new PixArtAlphaPipeline(components, options),
            var other => throw new WeightFileException(
                $"{Path.Combine(components.Folder.Root, "model_index.json")}: _class_name '{other}' is not a PixArt pipeline; " +
                "PixArtSharp runs PixArtAlphaPipeline and PixArtSigmaPipeline folders."),
        };
    }

    /// <summary>
    /// Runs one throw-away generation at the model's default size and settings (prompt "warm-up", seed 0), so the
    /// first real request does not pay for what a GPU does lazily: cuBLAS and cuDNN handles, kernel selection
    /// (cuDNN's benchmark mode times each convolution shape once), the caching allocator's first blocks. A server
    /// calls it once after <see cref="Preload"/> (<c>pixart serve</c> does on CUDA). The prompt cache is not touched.
    /// Returns the wall time it took.
    /// </summary>
    public TimeSpan WarmUp()
    {
        var clock = Stopwatch.StartNew();
        _warmingUp = true;
        try
        {
            using var output = Generate(new GenerationRequest { Prompts = ["warm-up"], Seed = 0 });
        }
        finally { _warmingUp = false; }
        return clock.Elapsed;
    }

    /// <summary>Loads every component now (a server does this once at start-up).</summary>
    public void Preload()
    {
        LoadTextEncoder();
        LoadTransformer();
        LoadVae();
    }

    /// <summary>The T5 encoder, loaded now if it is not yet.</summary>
    internal T5EncoderModel LoadTextEncoder() => _textEncoder = Loaded(_textEncoder, _components.LoadTextEncoder, "text encoder", null);
    /// <summary>The transformer, loaded now if it is not yet.</summary>
    internal PixArtTransformer2DModel LoadTransformer() => _transformer = Loaded(_transformer, _components.LoadTransformer, "transformer", null);
    /// <summary>The VAE, loaded now if it is not yet.</summary>
    internal IVae LoadVae() => _vae = Loaded(_vae, _components.LoadVae, "VAE", null);

    /// <summary>
    /// Runs a model's load where no dispose scope is open: its weights belong to the pipeline (freed by Release or
    /// Dispose), not to the scope of the call that happened to need it first. TorchSharp's scopes are per thread,
    /// so a load on a fresh thread starts outside every scope (not a pool thread: one may hold a scope an async
    /// caller left there).
    /// </summary>
    private static T OutsideScopes<T>(Func<T> load)
    {
        T? model = default;
        System.Runtime.ExceptionServices.ExceptionDispatchInfo? error = null;
        var thread = new Thread(() =>
        {
            try { model = load(); }
            catch (Exception e) { error = System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e); }
        }, maxStackSize: 16 << 20)
        { Name = "pixart-load" };
        thread.Start();
        thread.Join();
        error?.Throw();
        return model!;
    }

    /// <summary>Frees the text encoder now (only meaningful with KeepLoaded = false, or to save memory by hand).</summary>
    public void UnloadTextEncoder()
    {
        _textEncoder?.Dispose();
        _textEncoder = null;
    }

    private void Release<T>(ref T? component) where T : class, IDisposable
    {
        if (Options.KeepLoaded || component is null) return;
        component.Dispose();
        component = null;
        GC.Collect();
    }

    /// <summary>A stage's wall time: on CUDA after the queued kernels have run, so the time is the stage's own.</summary>
    private TimeSpan StageTime(Stopwatch clock)
    {
        TorchRuntime.Synchronize(Device);
        return clock.Elapsed;
    }

    /// <summary>Runs <paramref name="load"/> as a timed Load stage when the component is not loaded yet.</summary>
    private T Loaded<T>(T? current, Func<T> load, string name, Action<StageEvent>? onStage) where T : class
    {
        if (current is not null) return current;
        onStage?.Invoke(new StageEvent(PipelineStage.Load, name, null));
        var clock = Stopwatch.StartNew();
        var model = OutsideScopes(load);
        onStage?.Invoke(new StageEvent(PipelineStage.Load, name, StageTime(clock)));
        return model;
    }

    /// <summary>
    /// diffusers' encode_prompt: T5 states and masks for the prompts (each repeated num_images_per_prompt times)
    /// and, with classifier-free guidance, for the negative prompts. Precomputed embeddings pass through. T5 runs on
    /// the prompts' tokens only: the states at padded positions (mask 0) are 0, where diffusers has T5's states of the
    /// pad tokens; the transformer masks those positions out, so the images are the same.
    /// </summary>
    public (PromptEmbeddings Positive, PromptEmbeddings? Negative) EncodePrompt(
        IReadOnlyList<string>? prompts,
        bool doClassifierFreeGuidance = true,
        IReadOnlyList<string>? negativePrompts = null,
        int numImagesPerPrompt = 1,
        PromptEmbeddings? promptEmbeds = null,
        PromptEmbeddings? negativePromptEmbeds = null,
        bool cleanCaption = false,
        int? maxSequenceLength = null)
    {
        using var scope = NewDisposeScope();
        int batchSize = prompts?.Count ?? (int)promptEmbeds!.Embeds.shape[0];
        negativePrompts ??= [""];
        int maxLength = maxSequenceLength ?? DefaultMaxSequenceLength;

        // diffusers 0.29.2 repeats the embeddings per prompt (p0, p0, p1, p1) but the mask per batch (p0, p1, p0, p1),
        // which we mirror: then a copy can attend to another prompt's padded positions, so those need T5's states there.
        bool paddingStates = numImagesPerPrompt > 1 && batchSize > 1;
        Tensor embeds, mask;
        if (promptEmbeds is null)
        {
            (embeds, mask) = EncodeText(prompts!, cleanCaption, maxLength, paddingStates);
        }
        else
        {
            embeds = promptEmbeds.Embeds.to(ScalarType.Float32, Device);
            mask = promptEmbeds.AttentionMask.to(ScalarType.Int64, Device);
        }
        long bsEmbed = embeds.shape[0], seqLen = embeds.shape[1];
        // Duplicate for each image per prompt. The embeddings repeat per prompt (p0,p0,p1,p1) …
        embeds = embeds.repeat(1, numImagesPerPrompt, 1).view(bsEmbed * numImagesPerPrompt, seqLen, -1);
        // … and so does the mask in diffusers 0.29.2's code path we mirror:
        //   prompt_attention_mask = prompt_attention_mask.view(bs_embed, -1).repeat(num_images_per_prompt, 1)
        mask = mask.view(bsEmbed, -1).repeat(numImagesPerPrompt, 1);

        PromptEmbeddings? negative = null;
        if (doClassifierFreeGuidance)
        {
            Tensor nEmbeds, nMask;
            if (negativePromptEmbeds is null)
            {
                var uncond = negativePrompts.Count == 1 ? Enumerable.Repeat(negativePrompts[0], batchSize).ToList() : negativePrompts.ToList();
                (nEmbeds, nMask) = EncodeText(uncond, cleanCaption, (int)seqLen, paddingStates);
            }
            else
            {
                nEmbeds = negativePromptEmbeds.Embeds.to(ScalarType.Float32, Device);
                nMask = negativePromptEmbeds.AttentionMask.to(ScalarType.Int64, Device);
            }
            long nSeq = nEmbeds.shape[1];
            nEmbeds = nEmbeds.repeat(1, numImagesPerPrompt, 1).view(batchSize * numImagesPerPrompt, nSeq, -1);
            nMask = nMask.view(bsEmbed, -1).repeat(numImagesPerPrompt, 1);
            negative = new PromptEmbeddings(nEmbeds.MoveToOuterDisposeScope(), nMask.MoveToOuterDisposeScope());
        }
        return (new PromptEmbeddings(embeds.MoveToOuterDisposeScope(), mask.MoveToOuterDisposeScope()), negative);
    }

    /// <summary>Preprocess, tokenize (padded to maxLength, masked) and run T5 (see <see cref="EncodeTokens"/> for the padding).</summary>
    private (Tensor Embeds, Tensor Mask) EncodeText(IReadOnlyList<string> texts, bool cleanCaption, int maxLength, bool paddingStates)
    {
        var tokenizer = Tokenizer ?? throw new InvalidOperationException("This pipeline has no tokenizer: give prompt embeddings instead of prompts.");
        var cleaned = texts.Select(t => CaptionCleaner.Preprocess(t, cleanCaption)).ToList();
        if (_promptCache is not null && !_warmingUp)
            return _promptCache.GetOrEncode(cleaned, maxLength, cleanCaption, paddingStates, misses => EncodeCleaned(tokenizer, misses, maxLength, paddingStates));
        return EncodeCleaned(tokenizer, cleaned, maxLength, paddingStates);
    }

    private (Tensor Embeds, Tensor Mask) EncodeCleaned(T5Tokenizer tokenizer, IReadOnlyList<string> cleaned, int maxLength, bool paddingStates)
    {
        var batch = tokenizer.Encode(cleaned, maxLength);
        var ids = tensor(batch.InputIds, [cleaned.Count, maxLength], ScalarType.Int64, Device);
        var mask = tensor(batch.AttentionMask, [cleaned.Count, maxLength], ScalarType.Int64, Device);
        return (EncodeTokens(ids, mask, paddingStates), mask);
    }

    /// <summary>
    /// T5 on token ids (B, L) and their mask: fp32 states (B, L, d_model). T5 runs on the positions up to the batch's
    /// last token, not on the padding to max_sequence_length, so its cost follows the prompts' length (25 of 120
    /// tokens: ≈ 1/5 of the work), and every padded position's state is 0. diffusers returns T5's states of the pad
    /// tokens there, which the transformer's cross-attention masks out (weight exactly 0): the images are the same.
    /// Zero rather than whatever a batch-mate's length left there, so that a prompt's embedding does not depend on
    /// its batch (the prompt cache's entries). With <paramref name="paddingStates"/> T5 runs on all L positions, as
    /// diffusers does. The bench calls it with fixed ids.
    /// </summary>
    internal Tensor EncodeTokens(Tensor inputIds, Tensor attentionMask, bool paddingStates = false)
    {
        var encoder = LoadTextEncoder();
        using var scope = NewDisposeScope();
        using (no_grad())
        using (_offload.Stage(encoder))
        {
            long length = inputIds.shape[1], used = paddingStates ? length : UsedLength(attentionMask);
            var mask = attentionMask.narrow(1, 0, used).to(Device);                                 // [B, used]
            var states = encoder.forward(inputIds.narrow(1, 0, used).to(Device), mask).to(ScalarType.Float32); // [B, used, D]
            if (paddingStates) return states.MoveToOuterDisposeScope();
            states = states.masked_fill(mask.eq(0).unsqueeze(-1), 0.0f);
            if (used < length) states = nn.functional.pad(states, [0, 0, 0, length - used]);         // [B, L, D]
            return states.MoveToOuterDisposeScope();
        }
    }

    /// <summary>Positions up to the batch's last unmasked token (the tokenizer pads on the right).</summary>
    private static long UsedLength(Tensor attentionMask)
    {
        using var scope = NewDisposeScope();
        var any = attentionMask.ne(0).any(0);                                                      // [L]
        var last = nonzero(any);
        return last.numel() == 0 ? attentionMask.shape[1] : last.max().item<long>() + 1;
    }

    /// <summary>Runs the whole pipeline. Throws OperationCanceledException when cancelled (token or callback).</summary>
    /// <param name="request">The call's arguments (diffusers' <c>__call__</c>).</param>
    /// <param name="onStep">After each denoising step; return false to cancel.</param>
    /// <param name="cancellationToken">Cancels between steps and stages.</param>
    /// <param name="onStage">Stage starts and ends (load, encode, denoise, decode) with their wall times.</param>
    public PipelineOutput Generate(GenerationRequest request, Func<StepInfo, bool>? onStep = null,
                                   CancellationToken cancellationToken = default, Action<StageEvent>? onStage = null)
    {
        ArgumentNullException.ThrowIfNull(request);
        PipelineOutput? result = null;
        GenerateMany([request], (_, output) => result = output, onStep, cancellationToken, onStage);
        return result!;
    }

    /// <summary>
    /// Runs several requests as one job: every request is checked first, T5 encodes all their prompts once (and is
    /// freed, with KeepLoaded = false), then each request is denoised and decoded in turn, the transformer and the
    /// VAE staying loaded between them. Each output goes to <paramref name="onOutput"/> as soon as it is ready; the
    /// receiver owns (disposes) it. The step callback sees each request's steps (<see cref="StepInfo.Request"/>).
    /// </summary>
    public void GenerateMany(IReadOnlyList<GenerationRequest> requests, Action<int, PipelineOutput> onOutput,
                             Func<StepInfo, bool>? onStep = null, CancellationToken cancellationToken = default,
                             Action<StageEvent>? onStage = null)
    {
        ArgumentNullException.ThrowIfNull(requests);
        ArgumentNullException.ThrowIfNull(onOutput);
        if (requests.Count == 0) throw new ArgumentException("Give at least one request.", nameof(requests));
        using var _ = no_grad();

        // 1. Check inputs for every request before any work.
        var calls = new List<Call>(requests.Count);
        try
        {
            foreach (var r in requests) calls.Add(Prepare(r));

            // 3. Encode input prompts: all requests at once, then T5 is no longer needed.
            var clock = Stopwatch.StartNew();
            bool encodes = calls.Any(c => c.Request.Prompts is not null);
            if (encodes)
            {
                _textEncoder = Loaded(_textEncoder, _components.LoadTextEncoder, "text encoder", onStage);
                int promptCount = calls.Sum(c => c.Request.Prompts?.Count ?? 0);
                onStage?.Invoke(new StageEvent(PipelineStage.Encode, promptCount == 1 ? "1 prompt" : $"{promptCount} prompts", null));
                clock.Restart();
            }
            foreach (var c in calls)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var r = c.Request;
                c.Embeddings = EncodePrompt(r.Prompts, c.DoCfg, r.NegativePrompts, r.NumImagesPerPrompt,
                    r.PromptEmbeds, r.NegativePromptEmbeds, r.CleanCaption, c.MaxSequenceLength);
            }
            if (encodes)
            {
                Release(ref _textEncoder);
                onStage?.Invoke(new StageEvent(PipelineStage.Encode, "", StageTime(clock)));
            }

            for (int i = 0; i < calls.Count; i++)
            {
                bool last = i == calls.Count - 1;
                var output = Run(calls[i], i, last, onStep, cancellationToken, onStage);
                onOutput(i, output);
            }
        }
        finally
        {
            foreach (var c in calls) c.Dispose();
        }
    }

    /// <summary>One request, checked, with every default filled in.</summary>
    private sealed class Call(GenerationRequest request) : IDisposable
    {
        public GenerationRequest Request { get; } = request;
        public required IScheduler Scheduler { get; init; }
        public required int Steps { get; init; }
        public required double Guidance { get; init; }
        public required int Height { get; init; }
        public required int Width { get; init; }
        public required int OrigHeight { get; init; }
        public required int OrigWidth { get; init; }
        public required bool Binning { get; init; }
        public required int MaxSequenceLength { get; init; }
        public bool DoCfg => Guidance > 1.0;
        public (PromptEmbeddings Positive, PromptEmbeddings? Negative)? Embeddings { get; set; }

        public void Dispose()
        {
            Scheduler.Dispose();
            if (Embeddings is { } e) { e.Positive.Dispose(); e.Negative?.Dispose(); }
        }
    }

    /// <summary>
    /// Steps 0–2 of <c>__call__</c>: defaults from the model, resolution binning (before the checks, as diffusers
    /// bins first), then the checks. A fresh scheduler per call keeps its step state out of other calls.
    /// </summary>
    private Call Prepare(GenerationRequest request)
    {
        var scheduler = CreateScheduler(request.Scheduler);
        try
        {
            int steps = request.Timesteps?.Count ?? request.NumInferenceSteps ?? scheduler.DefaultSteps;
            double guidance = request.GuidanceScale ?? scheduler.DefaultGuidance;
            int height = request.Height ?? DefaultHeight;
            int width = request.Width ?? DefaultWidth;
            // Image-to-image: the output has the input image's size, and is never binned.
            if (request.Image is not null) (height, width) = CheckImageInputs(request);
            else if (request.Strength is not null)
                throw new ArgumentException("`strength` is only used for image-to-image: give an `image` too.", nameof(request.Strength));
            bool binning = request.UseResolutionBinning && request.Image is null;
            int origHeight = height, origWidth = width;
            if (height <= 0 || width <= 0)
                throw new ArgumentException($"`height` and `width` must be positive but are {height} and {width}.", height <= 0 ? nameof(request.Height) : nameof(request.Width));
            if (binning)
                (height, width) = Pipeline.AspectRatioBins.ClassifyHeightWidthBin(height, width, AspectRatioBins);
            CheckInputs(request, scheduler, height, width, steps, guidance, binning);
            return new Call(request)
            {
                Scheduler = scheduler,
                Steps = steps,
                Guidance = guidance,
                Height = height,
                Width = width,
                OrigHeight = origHeight,
                OrigWidth = origWidth,
                Binning = binning,
                MaxSequenceLength = request.MaxSequenceLength ?? DefaultMaxSequenceLength,
            };
        }
        catch
        {
            scheduler.Dispose();
            throw;
        }
    }

    /// <summary>Steps 4–8 of <c>__call__</c> for one prepared request whose prompts are encoded.</summary>
    private PipelineOutput Run(Call c, int requestIndex, bool last, Func<StepInfo, bool>? onStep, CancellationToken ct, Action<StageEvent>? onStage)
    {
        using var scope = NewDisposeScope();
        var request = c.Request;
        var scheduler = c.Scheduler;
        int total = (int)c.Embeddings!.Value.Positive.Embeds.shape[0];
        var tdtype = Options.DType;
        ct.ThrowIfCancellationRequested();

        // 3b. With guidance the negative rows go first: cat([negative, positive]).
        var (positive, negative) = c.Embeddings.Value;
        Tensor promptEmbeds = positive.Embeds, promptMask = positive.AttentionMask;
        if (c.DoCfg)
        {
            promptEmbeds = cat([negative!.Embeds, promptEmbeds], 0);
            promptMask = cat([negative.AttentionMask, promptMask], 0);
        }
        promptEmbeds = promptEmbeds.to(tdtype);

        // 4. Prepare timesteps. Image-to-image keeps the end of the schedule (LCM: compresses it), see ImageToImage.
        long[] timesteps;
        if (request.Image is null)
        {
            scheduler.SetTimesteps(request.Timesteps is null ? c.Steps : null, request.Timesteps);
            timesteps = scheduler.Timesteps;
        }
        else
        {
            timesteps = ImageToImage.SetTimesteps(scheduler, request.Timesteps is null ? c.Steps : null, request.Timesteps,
                request.Strength ?? ImageToImage.DefaultStrength).Timesteps;
        }

        // 5. Prepare latents: one fp32 randn of (B·n, C, H/8, W/8) on a CPU generator, as torch draws them
        // (fp16 draws differ from torch's, so the draw is always fp32 and cast afterwards).
        long latentChannels = InChannels;
        long[] latentShape = [total, latentChannels, c.Height / VaeScaleFactor, c.Width / VaeScaleFactor];
        long? seed = request.Generator is null && request.Generators is null ? request.Seed ?? Random.Shared.NextInt64(0, long.MaxValue) : request.Seed;
        var noise = new NoiseSource(request.Generators ?? [request.Generator ?? new Generator((ulong)seed!.Value)]);
        Tensor latents;
        if (request.Image is not null)
        {
            // 5b. Image-to-image: the noised image latent at the first kept timestep.
            latents = PrepareImageLatents(request.Image, scheduler, timesteps[0], latentShape, noise, onStage);
        }
        else
        {
            latents = request.Latents is null
                ? noise.Randn(latentShape, ScalarType.Float32, Device)
                : request.Latents.to(ScalarType.Float32, Device);
            latents = latents.mul(scheduler.InitNoiseSigma);
        }

        // 6.1 Prepare micro-conditions (α: only the 1024 models, sample_size 128; Σ: none).
        Tensor? resolution = null, aspectRatio = null;
        if (PreparesMicroConditions && SampleSize == 128)
        {
            resolution = tensor(new float[] { c.Height, c.Width }, [1, 2], ScalarType.Float32, Device).repeat(total, 1).to(tdtype);
            aspectRatio = tensor(new float[] { (float)((double)c.Height / c.Width) }, [1, 1], ScalarType.Float32, Device).repeat(total, 1).to(tdtype);
            if (c.DoCfg)
            {
                resolution = cat([resolution, resolution], 0);
                aspectRatio = cat([aspectRatio, aspectRatio], 0);
            }
        }

        // 7. Denoising loop.
        var transformer = _transformer = Loaded(_transformer, _components.LoadTransformer, "transformer", onStage);
        onStage?.Invoke(new StageEvent(PipelineStage.Denoise, $"{timesteps.Length} steps", null));
        var clock = Stopwatch.StartNew();
        using (_offload.Stage(transformer))
            for (int i = 0; i < timesteps.Length; i++)
            {
                ct.ThrowIfCancellationRequested();
                using var stepScope = NewDisposeScope();
                long t = timesteps[i];
                var latentModelInput = c.DoCfg ? cat([latents, latents], 0) : latents;
                var currentTimestep = full([latentModelInput.shape[0]], t, ScalarType.Int64, Device);

                // predict noise model_output (8 channels: eps and the learned variance)
                var noisePred = transformer.forward(latentModelInput.to(tdtype), promptEmbeds, promptMask, currentTimestep,
                    resolution, aspectRatio).to(ScalarType.Float32);

                // perform guidance, on all 8 channels
                if (c.DoCfg)
                {
                    var chunks = noisePred.chunk(2, 0);
                    noisePred = chunks[0] + c.Guidance * (chunks[1] - chunks[0]);
                }
                // learned sigma: keep the eps channels
                if (TransformerConfig.OutChannelsResolved / 2 == latentChannels)
                    noisePred = noisePred.chunk(2, 1)[0];

                // compute previous image: x_t -> x_t-1. α's one-step branch returns the scheduler's
                // pred_original_sample (DMD); schedulers without one (LCM, DPM-Solver++) return their prev_sample, which with
                // one step already is the denoised estimate (what diffusers 0.29.2's crashing branch meant to return).
                var denoised = onStep is null ? null : PredictedClean.Estimate(scheduler, t, latents, noisePred);  // previews
                var next = scheduler.Step(noisePred, t, latents, noise);
                if (HasOneStepBranch && timesteps.Length == 1 && scheduler.PredOriginalSample is { } x0)
                    next = x0;
                next = next.MoveToOuterDisposeScope();
                latents.Dispose();
                latents = next;

                if (onStep != null && !onStep(new StepInfo(i + 1, timesteps.Length, t, latents) { Request = requestIndex, Denoised = denoised }))
                    throw new OperationCanceledException("Cancelled by the step callback.");
            }
        onStage?.Invoke(new StageEvent(PipelineStage.Denoise, "", StageTime(clock)));
        ct.ThrowIfCancellationRequested();
        if (last) Release(ref _transformer);
        // Broken weights or an overflow give NaN, which decodes to a black image: fail here, naming the stage.
        NonFinite.Check(latents, "the final latents");

        if (request.OutputType == OutputType.Latent)
            return new PipelineOutput(null, latents.MoveToOuterDisposeScope(), c.Height, c.Width, seed);

        // 8. Decode: the VAE sees latents / scaling_factor; binning resizes back before the [0,1] postprocess.
        var image = NonFinite.Check(Decode(latents, onStage), "the decoded image");
        if (last) Release(ref _vae);
        if (c.Binning)
            image = Pipeline.AspectRatioBins.ResizeAndCropTensor(image, c.OrigWidth, c.OrigHeight);
        var images = image.div(2).add(0.5).clamp(0, 1).permute(0, 2, 3, 1).contiguous();
        return new PipelineOutput(images.MoveToOuterDisposeScope(), latents.MoveToOuterDisposeScope(), (int)images.shape[1], (int)images.shape[2], seed);
    }

    /// <summary>
    /// Step 8's VAE decode: <c>vae.decode(latents / scaling_factor).sample</c> in fp32, (B, C, h, w) → (B, 3, h·f, w·f)
    /// in about [−1, 1] (not yet post-processed). Loads the VAE if needed.
    /// </summary>
    public Tensor Decode(Tensor latents, Action<StageEvent>? onStage = null)
    {
        ArgumentNullException.ThrowIfNull(latents);
        using var _ = no_grad();
        var vae = _vae = Loaded(_vae, _components.LoadVae, "VAE", onStage);
        int tile = Options.VaeTileLatents ?? AutoTile(latents.shape[2], latents.shape[3], Options.DType,
            Device.type == DeviceType.CPU ? Bench.ProcessStats.MemAvailableBytes : null, TorchRuntime.VaeChannelsLast(Device));
        var tiled = tile > 0 ? vae as AutoencoderKL : null;   // TAESD decodes whole
        LastDecodeTileLatents = tiled is null ? 0 : tile;
        onStage?.Invoke(new StageEvent(PipelineStage.Decode, tiled is null ? "VAE" : $"VAE, in tiles of {tile} latents", null));
        var clock = Stopwatch.StartNew();
        using var scope = NewDisposeScope();
        using var onDevice = vae is IMovableModel movable ? _offload.Stage(movable) : null;
        var z = latents.to(ScalarType.Float32, Device).div(vae.ScalingFactor).to(Options.DType);
        // contiguous: the last conv ran channels-last; callers of Decode get plain NCHW memory.
        var image = (tiled?.DecodeTiled(z, tile) ?? vae.Decode(z)).to(ScalarType.Float32).contiguous();
        onStage?.Invoke(new StageEvent(PipelineStage.Decode, "", StageTime(clock)));
        return image.MoveToOuterDisposeScope();
    }

    /// <summary>The tile size (latents per side) the last <see cref="Decode"/> used; 0 when it decoded whole (the bench reports it).</summary>
    internal int LastDecodeTileLatents { get; private set; }

    /// <summary>
    /// The tile size (latents per side) an automatic decode uses: 0 (whole) when the SD/SDXL VAE's decode of one
    /// h×w latent fits in <paramref name="availableBytes"/> with a quarter to spare, else 128. The estimate is the
    /// measured peak RSS of a whole 1024×1024 decode (pixart bench, docs/performance.md), proportional to the pixel
    /// count: channels-last (the default) 2.44 GiB bf16 and 4.13 GiB fp32, ≈ 2.5 and 4.2 KB per output pixel; NCHW
    /// 3.3 and 5.0 GiB, ≈ 3.5 and 5.4 KB. At 2048×2048 the channels-last decodes measured 7.42 GiB (bf16) and 14.63 GiB
    /// (fp32), under the 9.8 and 16.4 GiB this gives. The VAE decodes one image at a time.
    /// </summary>
    internal static int AutoTile(long latentHeight, long latentWidth, ScalarType dtype, long? availableBytes, bool channelsLast)
    {
        if (availableBytes is not { } available) return 0;
        double perPixel = dtype == ScalarType.Float32 ? (channelsLast ? 4.2e3 : 5.4e3) : (channelsLast ? 2.5e3 : 3.5e3);
        double estimate = perPixel * latentHeight * 8 * latentWidth * 8;
        return estimate * 1.25 <= available || (latentHeight <= 128 && latentWidth <= 128) ? 0 : 128;
    }

    /// <summary>A fresh scheduler: the pipeline's (null) or the one named ("lcm", "dpm-solver", "sa-solver", "ddpm").</summary>
    internal IScheduler CreateScheduler(string? name)
    {
        try { return _components.CreateScheduler(name ?? Options.Scheduler); }
        catch (ArgumentException e) when (name is not null) { throw new ArgumentException(e.Message, nameof(GenerationRequest.Scheduler), e); }
    }

    /// <summary>
    /// Image-to-image latents, as StableDiffusionImg2ImgPipeline / LatentConsistencyModelImg2ImgPipeline
    /// prepare_latents compose them (one generator stream; the fixture README's draw order):
    /// VAE encode → sample (random draw 1, the image batch's shape) → × scaling_factor → repeat to the output batch →
    /// noise (random draw 2, the output batch's shape) → scheduler.add_noise at the first kept timestep.
    /// </summary>
    private Tensor PrepareImageLatents(Tensor image, IScheduler scheduler, long latentTimestep, long[] latentShape, NoiseSource noise, Action<StageEvent>? onStage)
    {
        using var scope = NewDisposeScope();
        long total = latentShape[0];
        // 5b.1 Encode: retrieve_latents(vae.encode(image), generator).
        var vae = _vae = Loaded(_vae, _components.LoadVae, "VAE", onStage);
        Tensor initLatents;
        using (vae is IMovableModel movable ? _offload.Stage(movable) : null)
            initLatents = vae.EncodeLatents(image.to(ScalarType.Float32, Device), noise);
        Release(ref _vae);
        // 5b.2 init_latents = scaling_factor · init_latents, one row per output image. diffusers tiles
        // (cat([init]·k)); with one image that is the same as repeating it. With one image per prompt the rows are
        // repeated per prompt instead (p0,p0,p1,p1, as the prompt embeddings are), so image b goes with prompt b.
        initLatents = initLatents.mul(VaeScalingFactor);
        long n = initLatents.shape[0];
        if (total > n)
            initLatents = n == 1 ? initLatents.expand(total, -1, -1, -1).contiguous() : initLatents.repeat_interleave(total / n, 0);
        // 5b.3 noise = randn(shape, generator); latents = scheduler.add_noise(init_latents, noise, latent_timestep)
        var addNoise = noise.Randn(latentShape, ScalarType.Float32, Device);
        var t = full([total], latentTimestep, ScalarType.Int64, Device);
        var latents = scheduler.AddNoise(initLatents, addNoise, t);
        return latents.MoveToOuterDisposeScope();
    }

    /// <summary>Checks the image-to-image arguments and returns the output size (the image's).</summary>
    private (int Height, int Width) CheckImageInputs(GenerationRequest r)
    {
        var image = r.Image!;
        int multiple = SizeMultiple;
        if (image.dim() != 4 || image.shape[1] != 3)
            throw new ArgumentException($"`image` must be a float tensor (N, 3, H, W) in [-1, 1], but has shape [{string.Join(",", image.shape)}].", nameof(r.Image));
        if (!image.is_floating_point())
            throw new ArgumentException($"`image` must be a float tensor in [-1, 1], but has dtype {image.dtype} (use ImageToImage.Preprocess for 8-bit RGB).", nameof(r.Image));
        int height = (int)image.shape[2], width = (int)image.shape[3];
        if (height < multiple || width < multiple || height % multiple != 0 || width % multiple != 0)
            throw new ArgumentException(
                $"The image is {width}×{height}; image-to-image needs both sides to be multiples of {multiple} (VAE factor {VaeScaleFactor} × patch {PatchSize}). " +
                $"Crop or resize it, e.g. to {Math.Max(multiple, width / multiple * multiple)}×{Math.Max(multiple, height / multiple * multiple)}.", nameof(r.Image));
        if (r.Height is { } h && h != height || r.Width is { } w && w != width)
            throw new ArgumentException($"Image-to-image output has the image's size {width}×{height}; `height`/`width` ({r.Width}×{r.Height}) must be left unset or equal it.", r.Height != height ? nameof(r.Height) : nameof(r.Width));
        ImageToImage.CheckStrength(r.Strength ?? ImageToImage.DefaultStrength);
        if (r.Latents is not null)
            throw new ArgumentException("Give either `image` (image-to-image) or `latents`, not both.", nameof(r.Latents));
        // (CheckInputs reports a request with neither prompts nor embeddings.)
        int batch = r.Prompts?.Count ?? (r.PromptEmbeds is { } pe ? (int)pe.Embeds.shape[0] : 1);
        long n = image.shape[0];
        if (n != 1 && n != batch)
            throw new ArgumentException($"`image` has {n} images but there are {batch} prompts: give one image, or one per prompt.", nameof(r.Image));
        if (r.Generators is not null && n != batch)
            throw new ArgumentException($"With one generator per prompt, give one image per prompt ({batch}), not {n}.", nameof(r.Image));
        return (height, width);
    }

    /// <summary>
    /// Whether a generation of this size can run, and why not: with binning every positive size can (it runs at
    /// the bin's size and is resized back), without it the sides must be multiples of <see cref="SizeMultiple"/>
    /// (the latents split into patches). Null when it can.
    /// </summary>
    public string? SizeProblem(int height, int width, bool binning)
    {
        if (height <= 0 || width <= 0) return $"height and width must be positive, got {width}×{height}.";
        if (binning) return null;
        int m = SizeMultiple;
        if (height % m == 0 && width % m == 0) return null;
        return $"{width}×{height} cannot run without resolution binning: both sides must be multiples of {m} " +
               $"(VAE factor {VaeScaleFactor} × patch {PatchSize}); try {Math.Max(m, width / m * m)}×{Math.Max(m, height / m * m)}, or keep binning on.";
    }

    private void CheckInputs(GenerationRequest r, IScheduler scheduler, int height, int width, int steps, double guidance, bool binning)
    {
        if (height % 8 != 0 || width % 8 != 0)
            throw new ArgumentException($"`height` and `width` have to be divisible by 8 but are {height} and {width}.", r.Height % 8 != 0 ? nameof(r.Height) : nameof(r.Width));
        if (!binning && r.Image is null && SizeProblem(height, width, false) is { } sizeProblem)
            throw new ArgumentException(sizeProblem, height % SizeMultiple != 0 ? nameof(r.Height) : nameof(r.Width));
        if (steps < 1)
            throw new ArgumentException($"`num_inference_steps` must be at least 1 but is {steps}.", nameof(r.NumInferenceSteps));
        if (guidance < 0 || double.IsNaN(guidance))
            throw new ArgumentException($"`guidance_scale` must be ≥ 0 but is {guidance}.", nameof(r.GuidanceScale));
        if (r.NumImagesPerPrompt < 1)
            throw new ArgumentException($"`num_images_per_prompt` must be at least 1 but is {r.NumImagesPerPrompt}.", nameof(r.NumImagesPerPrompt));
        if (r.MaxSequenceLength is < 1)
            throw new ArgumentException($"`max_sequence_length` must be at least 1 but is {r.MaxSequenceLength}.", nameof(r.MaxSequenceLength));
        if (r.Prompts != null && r.PromptEmbeds != null)
            throw new ArgumentException("Cannot forward both `prompt` and `prompt_embeds`. Please make sure to only forward one of the two.", nameof(r.PromptEmbeds));
        if (r.Prompts == null && r.PromptEmbeds == null)
            throw new ArgumentException("Provide either `prompt` or `prompt_embeds`. Cannot leave both `prompt` and `prompt_embeds` undefined.", nameof(r.Prompts));
        if (r.Prompts is { Count: 0 })
            throw new ArgumentException("`prompt` is an empty list; give at least one prompt.", nameof(r.Prompts));
        if (r.Prompts != null && r.NegativePromptEmbeds != null)
            throw new ArgumentException("Cannot forward both `prompt` and `negative_prompt_embeds`: give negative prompts as text, or both sides as embeddings.", nameof(r.NegativePromptEmbeds));
        if (r.NegativePrompts.Count > 1 && r.NegativePromptEmbeds != null)
            throw new ArgumentException("Cannot forward both `negative_prompt` and `negative_prompt_embeds`. Please make sure to only forward one of the two.", nameof(r.NegativePromptEmbeds));
        int batch = r.Prompts?.Count ?? (int)r.PromptEmbeds!.Embeds.shape[0];
        if (r.NegativePrompts.Count != 1 && r.NegativePrompts.Count != batch)
            throw new ArgumentException($"`negative_prompt` has {r.NegativePrompts.Count} entries but `prompt` has {batch}: give one negative prompt, or one per prompt.", nameof(r.NegativePrompts));
        foreach (var (e, name) in new[] { (r.PromptEmbeds, "prompt_embeds"), (r.NegativePromptEmbeds, "negative_prompt_embeds") })
        {
            if (e is null) continue;
            if ((object?)e.AttentionMask is null)
                throw new ArgumentException($"Must provide the attention mask when specifying `{name}`.", name);
            if (e.Embeds.dim() != 3 || e.AttentionMask.dim() != 2 || e.Embeds.shape[0] != e.AttentionMask.shape[0] || e.Embeds.shape[1] != e.AttentionMask.shape[1])
                throw new ArgumentException($"`{name}` must be (batch, seq, channels) with a (batch, seq) mask, but got [{string.Join(",", e.Embeds.shape)}] and [{string.Join(",", e.AttentionMask.shape)}].", name);
        }
        if (r.PromptEmbeds != null && r.NegativePromptEmbeds != null &&
            !r.PromptEmbeds.Embeds.shape.SequenceEqual(r.NegativePromptEmbeds.Embeds.shape))
            throw new ArgumentException($"`prompt_embeds` and `negative_prompt_embeds` must have the same shape when passed directly, but got: `prompt_embeds` [{string.Join(",", r.PromptEmbeds.Embeds.shape)}] != `negative_prompt_embeds` [{string.Join(",", r.NegativePromptEmbeds.Embeds.shape)}].", nameof(r.NegativePromptEmbeds));
        if (r.Generators is not null && r.Generators.Count != batch)
            throw new ArgumentException($"`generators` has {r.Generators.Count} entries but there are {batch} prompts: give one generator per prompt.", nameof(r.Generators));
        if (r.Generators is not null && r.Generator is not null)
            throw new ArgumentException("Give either `generator` or `generators`, not both.", nameof(r.Generators));
        if (r.Timesteps != null && !scheduler.AcceptsCustomTimesteps)
            throw new ArgumentException($"The current scheduler class {scheduler.ClassName}'s `set_timesteps` does not support custom timestep schedules. Please check whether you are using the correct scheduler.", nameof(r.Timesteps));
        if (r.Timesteps != null && r.NumInferenceSteps != null && r.NumInferenceSteps != r.Timesteps.Count)
            throw new ArgumentException($"`timesteps` has {r.Timesteps.Count} entries but `num_inference_steps` is {r.NumInferenceSteps}: give one of the two.", nameof(r.Timesteps));
        if (r.Latents is not null)
        {
            long[] expect = [batch * r.NumImagesPerPrompt, InChannels, height / VaeScaleFactor, width / VaeScaleFactor];
            if (!r.Latents.shape.SequenceEqual(expect))
                throw new ArgumentException($"`latents` has shape [{string.Join(",", r.Latents.shape)}] but this request needs [{string.Join(",", expect)}].", nameof(r.Latents));
        }
    }

    /// <summary>Frees every loaded component and the default scheduler.</summary>
    public void Dispose()
    {
        _textEncoder?.Dispose();
        _transformer?.Dispose();
        _vae?.Dispose();
        _textEncoder = null; _transformer = null; _vae = null;
        _promptCache?.Dispose();
        Scheduler.Dispose();
        GC.SuppressFinalize(this);
    }
}
