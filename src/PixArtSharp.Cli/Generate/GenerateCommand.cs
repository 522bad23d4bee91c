using System.CommandLine;
using System.CommandLine.Parsing;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PixArtSharp.Cli.Download;
using PixArtSharp.Hub;
using PixArtSharp.Imaging;
using PixArtSharp.Loading;
using PixArtSharp.Pipeline;
using static TorchSharp.torch;

namespace PixArtSharp.Cli.Generate;

/// <summary>
/// <c>pixart generate PROMPT…</c>: text to PNG with the model's right defaults, live progress, and files that carry
/// their own recipe. With a seed, the pixels equal diffusers' PixArtAlphaPipeline output rounded as
/// <c>(x*255).round()</c> (with <c>--dtype fp32</c>).
/// </summary>
public static class GenerateCommand
{
    public const string DefaultModel = "PixArt-alpha/PixArt-LCM-XL-2-1024-MS";

    /// <summary>Every flag; null / false = not given (so --from-png's value stays).</summary>
    public sealed record Args
    {
        public IReadOnlyList<string> Prompts { get; init; } = [];
        public string? PromptsFile { get; init; }
        public int? BatchSize { get; init; }
        public string? NegativePrompt { get; init; }
        public string? Model { get; init; }
        public string? Revision { get; init; }
        public string? Variant { get; init; }
        public int? Steps { get; init; }
        /// <summary>--timesteps 400 or 999,499: diffusers' custom timesteps (one-step DMD: 400).</summary>
        public string? Timesteps { get; init; }
        public int? MaxSequenceLength { get; init; }
        /// <summary>--lora PATH[:SCALE], repeatable.</summary>
        public IReadOnlyList<string> Loras { get; init; } = [];
        /// <summary>Components from elsewhere: a Hub id (org/name[/subfolder]) or a folder.</summary>
        public string? TextEncoder { get; init; }
        public string? Transformer { get; init; }
        public string? Vae { get; init; }
        public double? Guidance { get; init; }
        public long? Seed { get; init; }
        public int? Height { get; init; }
        public int? Width { get; init; }
        public int? NumImages { get; init; }
        public bool NoResolutionBinning { get; init; }
        public bool NoCleanCaption { get; init; }
        public string? Scheduler { get; init; }
        public string? DType { get; init; }
        /// <summary>--device auto|cpu|cuda|cuda:N and --offload none|model|sequential.</summary>
        public string? Device { get; init; }
        public string? Offload { get; init; }
        public bool Verbose { get; init; }
        public int? Threads { get; init; }
        public string? Output { get; init; }
        public string? Style { get; init; }
        public string? FromPng { get; init; }
        /// <summary>Image-to-image: the source image, its strength, and whether to resize it to fit.</summary>
        public string? Image { get; init; }
        public double? Strength { get; init; }
        public bool ResizeToFit { get; init; }
        public bool Quiet { get; init; }
        public bool Json { get; init; }
        /// <summary>Live previews: --preview tiny|none, --preview-vae ID|DIR, --preview-file PATH (see PreviewSetup).</summary>
        public string? Preview { get; init; }
        public string? PreviewVae { get; init; }
        public string? PreviewFile { get; init; }
    }

    /// <summary>One pipeline call: its settings (seed fixed), and which of its images are saved (null = all).</summary>
    public sealed record Batch(GenerationSettings Settings, int? OnlyImage)
    {
        public int ImageCount => OnlyImage is null ? Settings.Prompts.Count * Settings.NumImages : 1;
    }

    /// <summary>What a run will do, decided before any model work (so argument errors cost nothing).</summary>
    public sealed record Plan(IReadOnlyList<Batch> Batches, ModelInfo Model, IReadOnlyList<string> Files, ImageInput? Image = null)
    {
        /// <summary>With --from-png: what was taken from the file, said on stderr before the run.</summary>
        public string? FromPngNote { get; init; }
    }

    public static Command Create()
    {
        var prompts = new Argument<string[]>("prompt")
        {
            Arity = ArgumentArity.ZeroOrMore,
            Description = "The prompt(s). Several prompts run as one batch, like a diffusers prompt list.",
        };
        var promptsFile = new Option<string?>("--prompts-file") { Description = $"A text file with one prompt per line (blank lines skipped), run in batches of --batch-size. A regular file of at most {InputFiles.MaxPromptsFileBytes / 1024} KiB.", HelpName = "FILE" };
        var batchSize = new Option<int?>("--batch-size") { Description = "Prompts per pipeline call [default: 1 with --prompts-file, all positional prompts together otherwise]. Batch b uses seed + b." };
        var negative = new Option<string?>("--negative-prompt", "-n") { Description = "What the image should not show [default: \"\"]. Only has an effect with --guidance above 1." };
        var model = new Option<string?>("--model", "-m") { Description = $"A Hugging Face id or a local diffusers folder [default: {DefaultModel}].", HelpName = "ID|FOLDER" };
        var revision = new Option<string?>("--revision") { Description = "Hub branch, tag or commit [default: main]." };
        var variant = new Option<string?>("--variant") { Description = "Weights variant, e.g. fp16 (components without it load their default weights)." };
        var steps = new Option<int?>("--steps") { Description = "Denoising steps [default: from the scheduler: LCM 4, DPM-Solver 20, SA-Solver 25]." };
        var timesteps = new Option<string?>("--timesteps") { HelpName = "T[,T…]", Description = "Custom descending timesteps instead of --steps, as diffusers' timesteps=[…] (one-step DMD models: --timesteps 400 --guidance 1)." };
        var maxSeq = new Option<int?>("--max-sequence-length") { Description = "T5 tokens per prompt [default: the pipeline's: PixArt-α 120, PixArt-Σ 300]." };
        var lora = new Option<string[]>("--lora") { HelpName = "PATH[:SCALE]", Arity = ArgumentArity.ZeroOrMore, AllowMultipleArgumentsPerToken = false, Description = "A LoRA adapter merged into the transformer: a PEFT folder (adapter_config.json + adapter_model.safetensors) or a kohya .safetensors file, with an optional scale [default: 1]. Repeatable; adapters add up." };
        var textEncoder = new Option<string?>("--text-encoder") { HelpName = "ID|DIR", Description = "The T5 text encoder from elsewhere: a folder, or a Hub id (org/name, org/name/subfolder)." };
        var transformer = new Option<string?>("--transformer") { HelpName = "ID|DIR", Description = "The transformer from elsewhere (e.g. PixArt-alpha/PixArt-Sigma-XL-2-2K-MS with a 1024 pipeline's other parts): a folder or a Hub id." };
        var vae = new Option<string?>("--vae") { HelpName = "ID|DIR", Description = "The VAE from elsewhere: a folder or a Hub id (org/name, org/name/subfolder)." };
        var guidance = new Option<double?>("--guidance", "-g") { Description = "Classifier-free guidance scale; 1 or less disables it [default: LCM 0, DPM-Solver 4.5, SA-Solver 3]." };
        var seed = new Option<long?>("--seed", "-s") { Description = "Random seed (torch.Generator('cpu').manual_seed) [default: random, printed and recorded in the PNG]." };
        var height = new Option<int?>("--height", "-H") { Description = "Image height in pixels, a multiple of 8 [default: from the model, 1024 for the XL models]." };
        var width = new Option<int?>("--width", "-W") { Description = "Image width in pixels, a multiple of 8 [default: from the model]." };
        var numImages = new Option<int?>("--num-images") { Description = "Images per prompt [default: 1]." };
        var noBinning = new Option<bool>("--no-resolution-binning") { Description = "Generate at exactly --height x --width instead of the nearest trained aspect ratio (then resized back)." };
        var noClean = new Option<bool>("--no-clean-caption") { Description = "Do not clean the prompt as PixArt's caption cleaner does (diffusers' clean_caption=False)." };
        var scheduler = new Option<string?>("--scheduler") { Description = "lcm, dpm-solver or sa-solver [default: the model's, from model_index.json]." };
        scheduler.AcceptOnlyFromAmong([.. PixArtSharp.Schedulers.SchedulerFactory.Names]);
        var dtype = new Option<string?>("--dtype") { Description = "auto, fp32, bf16 or fp16 [default: auto = fp16 on CUDA, bf16 on CPUs with AVX-512-BF16 or AMX, else fp32]. fp32 is the mode whose pixels equal diffusers' fp32 output for a seed." };
        dtype.AcceptOnlyFromAmong("auto", "fp32", "bf16", "fp16");
        var device = new Option<string?>("--device") { Description = $"Where the models run: {DeviceSpec.Choices} [default: auto = a GPU when a CUDA libtorch and a GPU are there, else the CPU]." };
        var offload = new Option<string?>("--offload") { Description = $"GPU memory policy: {OffloadPolicy.Choices} [default: none]. model: each component moves to the GPU for its stage (the model card's CPU offload); sequential: layer by layer, for GPUs smaller than the T5." };
        var threads = new Option<int?>("--threads") { Description = $"CPU threads for libtorch, 1 to {PipelineSetup.MaxThreads} (4 per core) [default: libtorch's, one per core]." };
        var output = new Option<string?>("--output", "-o") { Description = "The PNG file (or an existing folder). With several images: <stem>-<i>.png, i from 0, prompt-major [default: pixart-<seed>.png].", HelpName = "FILE" };
        var style = new Option<string?>("--style") { HelpName = "NAME", Description = $"A PixArt demo style preset: {string.Join(", ", StylePresets.All.Select(s => s.Name))}." };
        style.CompletionSources.Add(StylePresets.All.Select(s => s.Name).ToArray());
        var image = new Option<string?>("--image", "-i") { Description = $"Image-to-image: start from this PNG, JPEG or WebP instead of noise. The output has its size (sides multiples of 16, or --resize-to-fit); the PNG records its sha256 and the strength. A regular file of at most {ImageReader.MaxFileBytes >> 20} MiB and {ImageReader.DefaultMaxPixels / 1_000_000} megapixels.", HelpName = "FILE" };
        var strength = new Option<double?>("--strength") { Description = "With --image: how much of it is repainted, in (0, 1] [default: 0.8]. LCM still runs all its steps; DPM-Solver and SA-Solver run int(steps x strength)." };
        var resizeToFit = new Option<bool>("--resize-to-fit") { Description = "With --image: scale it to at most the model's pixel area (keeping its aspect ratio), sides rounded down to multiples of 16 (Lanczos-3)." };
        var fromPng = new Option<string?>("--from-png") { Description = $"Reproduce an image from its metadata (prompt, seed, everything); flags given as well override it. A model recorded as a local folder must be given again with --model (paths are never taken from an image). A regular PNG file of at most {InputFiles.MaxFromPngBytes >> 20} MiB with text chunks of at most {InputFiles.MaxPngTextChunkBytes >> 20} MiB.", HelpName = "FILE" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "No progress or warnings; print only the files written." };
        var (preview, previewVae, previewFile) = (new Option<string?>("--preview") { HelpName = "tiny|none", Description = "Live previews: after each step a TAESD decodes the predicted image into --preview-file [default: tiny when --preview-vae or --preview-file is given]." },
            new Option<string?>("--preview-vae") { HelpName = "ID|DIR", Description = "The TAESD for previews [default: madebyollin/taesd (α/LCM) or madebyollin/taesdxl (Σ) from the Hugging Face cache]." },
            new Option<string?>("--preview-file") { HelpName = "FILE", Description = "Where each step's preview is written (atomically; .jpg or .webp) [default: <output>.preview.jpg]." });
        var json = new Option<bool>("--json") { Description = "Print one JSON object (files, seed, timings, settings) on stdout instead of text." };

        var command = new Command("generate",
            "Generate images from text prompts with PixArt-α / PixArt-LCM. The model is downloaded into the Hugging Face cache " +
            "on first use (see `pixart download`). Each PNG records its recipe: a tEXt 'parameters' chunk as A1111/ComfyUI read it, " +
            "and 'pixart-settings' with every setting as JSON (for --from-png).\n\n" +
            "Examples:\n" +
            "  pixart generate \"A small cactus with a happy face in the Sahara desert.\"\n" +
            "  pixart generate \"a cactus\" --model ../shared/fixtures/tiny-pixart-lcm -o cactus.png\n" +
            "  pixart generate \"a red fox\" \"a blue bird\" --num-images 2 --seed 42 -o animals.png   (animals-0..3.png)\n" +
            "  pixart generate \"a castle\" --style Anime --steps 8 --seed 7\n" +
            "  pixart generate --prompts-file prompts.txt --batch-size 4 -o out/img.png\n" +
            "  pixart generate --from-png pixart-42.png --steps 8\n" +
            "  pixart generate \"a watercolor painting\" --image photo.jpg --strength 0.6 --resize-to-fit")
        {
            prompts, promptsFile, batchSize, negative, model, revision, variant, steps, timesteps, maxSeq, lora, textEncoder, transformer, vae, guidance, seed, height, width, numImages,
            noBinning, noClean, scheduler, dtype, device, offload, threads, output, style, fromPng, quiet, json, image, strength, resizeToFit, preview, previewVae, previewFile,
        };

        command.SetAction(CliApp.Guard((parseResult, cli, ct) =>
        {
            var args = new Args
            {
                Prompts = parseResult.GetValue(prompts) ?? [],
                PromptsFile = parseResult.GetValue(promptsFile),
                BatchSize = parseResult.GetValue(batchSize),
                NegativePrompt = parseResult.GetValue(negative),
                Model = parseResult.GetValue(model),
                Revision = parseResult.GetValue(revision),
                Variant = parseResult.GetValue(variant),
                Steps = parseResult.GetValue(steps),
                Timesteps = parseResult.GetValue(timesteps),
                MaxSequenceLength = parseResult.GetValue(maxSeq),
                Loras = parseResult.GetValue(lora) ?? [],
                TextEncoder = parseResult.GetValue(textEncoder),
                Transformer = parseResult.GetValue(transformer),
                Vae = parseResult.GetValue(vae),
                Guidance = parseResult.GetValue(guidance),
                Seed = parseResult.GetValue(seed),
                Height = parseResult.GetValue(height),
                Width = parseResult.GetValue(width),
                NumImages = parseResult.GetValue(numImages),
                NoResolutionBinning = parseResult.GetValue(noBinning),
                NoCleanCaption = parseResult.GetValue(noClean),
                Scheduler = parseResult.GetValue(scheduler),
                DType = parseResult.GetValue(dtype),
                Device = parseResult.GetValue(device),
                Offload = parseResult.GetValue(offload),
                Verbose = parseResult.GetValue(CliApp.Verbose),
                Threads = parseResult.GetValue(threads),
                Output = parseResult.GetValue(output),
                Style = parseResult.GetValue(style),
                FromPng = parseResult.GetValue(fromPng),
                Image = parseResult.GetValue(image),
                Strength = parseResult.GetValue(strength),
                ResizeToFit = parseResult.GetValue(resizeToFit),
                Quiet = parseResult.GetValue(quiet),
                Json = parseResult.GetValue(json),
                Preview = parseResult.GetValue(preview),
                PreviewVae = parseResult.GetValue(previewVae),
                PreviewFile = parseResult.GetValue(previewFile),
            };
            // A mistyped option lands among the prompts (their arity is open): refuse it, unless it follows "--".
            if (!parseResult.Tokens.Any(t => t.Type == TokenType.DoubleDash) && args.Prompts.FirstOrDefault(p => p.Length > 1 && p[0] == '-') is { } stray)
                throw new UsageException($"Unknown option '{stray}'. See 'pixart generate --help'; a prompt that starts with '-' goes after --.");
            return RunAsync(args, cli, ct);
        }));
        return command;
    }

    // ───────────────────────────── plan ─────────────────────────────

    /// <summary>Turns the flags (and --from-png's record) into batches, the model and the output files; validates everything.</summary>
    public static Plan MakePlan(Args a)
    {
        var settings = new GenerationSettings();
        ModelInfo? recorded = null;
        int? recordedImage = null;
        if (a.FromPng is not null)
        {
            (settings, recorded, int image) = ImageMetadata.Read(a.FromPng);
            recordedImage = image;
        }

        // Prompts: positional, or a file; else the recorded ones.
        IReadOnlyList<string>? prompts = null;
        if (a.Prompts.Count > 0 && a.PromptsFile is not null)
            throw new UsageException("Give prompts either as arguments or with --prompts-file, not both.");
        if (a.Prompts.Count > 0) prompts = a.Prompts;
        if (a.PromptsFile is not null)
        {
            // A regular file of at most 1 MiB, checked before reading (/dev/zero or a FIFO would never end).
            prompts = InputFiles.ReadPrompts(a.PromptsFile);
            if (prompts.Count == 0) throw new UsageException($"--prompts-file: {a.PromptsFile} has no prompts (one per line).");
        }
        if (prompts is null && a.FromPng is null)
            throw new UsageException("Give a prompt, e.g. pixart generate \"A small cactus with a happy face in the Sahara desert.\" (or --prompts-file, or --from-png).");
        if (a.BatchSize is < 1) throw new UsageException($"--batch-size must be at least 1, got {a.BatchSize}.");
        PipelineSetup.CheckThreads(a.Threads);
        if (a.Variant is { } v && !InputFiles.IsVariantName(v))
            throw new UsageException($"--variant '{v}' is not a variant name (letters, digits, '-', '_', '.', e.g. fp16).");

        // Flags override the record.
        bool batchChanged = prompts is not null || a.NumImages is not null || a.BatchSize is not null;
        settings = settings with
        {
            Prompts = prompts ?? settings.Prompts,
            NegativePrompt = a.NegativePrompt ?? settings.NegativePrompt,
            Style = a.Style ?? settings.Style,
            Steps = a.Timesteps is not null ? null : a.Steps ?? settings.Steps,
            Timesteps = a.Timesteps is not null ? ParseTimesteps(a.Timesteps) : a.Steps is not null ? null : settings.Timesteps,
            MaxSequenceLength = a.MaxSequenceLength ?? settings.MaxSequenceLength,
            Guidance = (a.Guidance ?? settings.Guidance) + 0.0, // -0 + 0 = +0: recorded and printed as 0
            Height = a.Height ?? settings.Height,
            Width = a.Width ?? settings.Width,
            NumImages = a.NumImages ?? settings.NumImages,
            Scheduler = a.Scheduler ?? settings.Scheduler,
            ResolutionBinning = !a.NoResolutionBinning && settings.ResolutionBinning,
            CleanCaption = !a.NoCleanCaption && settings.CleanCaption,
        };
        // Image-to-image: --image, --strength, --resize-to-fit (and the source a --from-png record names).
        (settings, var imageInput) = ImageInput.Plan(settings, a);
        long seed = a.Seed ?? settings.Seed ?? Random.Shared.NextInt64(0, 1L << 53);

        // Batches: positional prompts are one batch (a diffusers prompt list); a prompts file runs batch-size at a time.
        int batchSize = a.BatchSize ?? (a.PromptsFile is not null ? 1 : Math.Max(1, settings.Prompts.Count));
        var batches = new List<Batch>();
        for (int start = 0, b = 0; start < settings.Prompts.Count; start += batchSize, b++)
        {
            var s = settings with { Prompts = settings.Prompts.Skip(start).Take(batchSize).ToList(), Seed = seed + b };
            s.Validate(GenerationLimits.Cli);
            batches.Add(new Batch(s, null));
        }
        if (batches.Count == 0) settings.Validate(GenerationLimits.Cli); // an empty recorded prompt list: say so
        // --from-png of one image out of a batch: rerun the batch (its images depend on each other through the one
        // generator) and keep only that image, unless the flags changed the batch.
        if (recordedImage is { } k && !batchChanged && batches.Count == 1 && batches[0].Settings.Prompts.Count * batches[0].Settings.NumImages > 1)
        {
            if (k < 0 || k >= batches[0].Settings.Prompts.Count * batches[0].Settings.NumImages)
                throw new UsageException($"--from-png: the recorded image_index {k} is outside its batch.");
            batches[0] = batches[0] with { OnlyImage = k };
        }

        // Model: flags, else the record, else the default. A PNG may come from anyone: its model is taken only if
        // it is a Hub id (a recorded local path needs --model again), and its variant and revision only if they are
        // names, so nothing in a file someone sent can point at a path on this machine.
        bool modelGiven = a.Model is not null;
        if (recorded is not null && !modelGiven)
        {
            if (!InputFiles.IsHubId(recorded.Model))
                throw new UsageException($"--from-png: {a.FromPng} was made with the local model '{recorded.Model}'; give it again with --model FOLDER (local paths are never taken from an image).");
            if (recorded.Variant is { } rv && !InputFiles.IsVariantName(rv))
                throw new UsageException($"--from-png: {a.FromPng} records the variant '{rv}', which is not a variant name; give --model (and --variant) yourself.");
            if (recorded.ModelRevision is { } rr && !InputFiles.IsRevision(rr))
                throw new UsageException($"--from-png: {a.FromPng} records the revision '{rr}', which is not a Hub revision; give --model (and --revision) yourself.");
        }
        var modelInfo = new ModelInfo(
            a.Model ?? recorded?.Model ?? DefaultModel,
            a.Revision ?? (modelGiven ? null : recorded?.ModelRevision),
            a.Variant ?? (modelGiven ? null : recorded?.Variant),
            a.DType ?? recorded?.DType ?? "auto")
        {
            // Adapters and components are local files or other repos: never taken from a PNG someone sent, only
            // from the command line (a --from-png run that needs them says so below).
            TextEncoder = a.TextEncoder,
            Transformer = a.Transformer,
            Vae = a.Vae,
        };
        if (!DTypeChoice.IsValid(modelInfo.DType)) throw new UsageException($"--dtype must be {DTypeChoice.Choices}, got '{modelInfo.DType}'.");
        DeviceSpec.Parse(a.Device ?? "auto");
        OffloadPolicy.Parse(a.Offload ?? "none");
        foreach (var l in a.Loras) PipelineSetup.ParseLora(l);
        if (recorded is not null && a.Loras.Count == 0 && recorded.Loras is { Count: > 0 } recordedLoras)
            throw new UsageException($"--from-png: {a.FromPng} was made with LoRA {string.Join("; ", recordedLoras)}; give the adapter(s) again with --lora PATH[:SCALE] (paths are never taken from an image).");

        string defaultName = a.FromPng is not null
            ? $"{Path.GetFileNameWithoutExtension(a.FromPng)}-repro.png"
            : $"pixart-{seed}.png";
        string outputPath = OutputNaming.Normalize(a.Output, defaultName);
        var files = OutputNaming.Paths(outputPath, batches.Sum(b => b.ImageCount));
        string? fromNote = a.FromPng is null ? null
            : $"from {Path.GetFileName(a.FromPng)}: model {(modelGiven ? "(from --model)" : modelInfo.Model)}" +
              $"{(!modelGiven && modelInfo.ModelRevision is { } rev ? $"@{rev}" : "")}{(modelInfo.Variant is { } va ? $", variant {va}" : "")}, " +
              $"seed {(a.Seed is null ? seed.ToString(CultureInfo.InvariantCulture) : "(from --seed)")}, " +
              $"{settings.Prompts.Count} prompt(s), {(settings.Steps is { } st ? $"{st} steps" : "default steps")}, {modelInfo.DType}";
        return new Plan(batches, modelInfo, files, imageInput) { FromPngNote = fromNote };
    }

    /// <summary>--timesteps "999,499" → [999, 499].</summary>
    public static IReadOnlyList<int> ParseTimesteps(string text)
    {
        var parts = text.Split([',', ' '], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var list = new List<int>(parts.Length);
        foreach (var p in parts)
            list.Add(int.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out int t)
                ? t : throw new UsageException($"--timesteps takes whole numbers separated by commas (e.g. 400, or 999,749,499,249), got '{text}'."));
        if (list.Count == 0) throw new UsageException("--timesteps needs at least one timestep, e.g. --timesteps 400.");
        return list;
    }

    /// <summary>An ArgumentException from the settings' checks as a command-line message naming the flag.</summary>
    private static string OptionText(ArgumentException e)
    {
        string message = e.Message;
        int i = message.LastIndexOf(" (Parameter '", StringComparison.Ordinal);
        if (i > 0) message = message[..i];
        return e.ParamName is { } p ? $"--{p.Replace('_', '-')}: {message}" : message;
    }

    // ───────────────────────────── run ─────────────────────────────

    private sealed record Saved(string File, int Batch, int ImageIndex, string Prompt, long Seed);

    public static async Task<int> RunAsync(Args a, CliOutput cli, CancellationToken ct)
    {
        var total = Stopwatch.StartNew();
        var plan = MakePlan(a);
        OutputNaming.CheckWritable(plan.Files);
        PreviewSetup.Wanted(a.Preview, a.PreviewVae, a.PreviewFile); // a mistyped --preview fails before any download
        if (plan.FromPngNote is { } note && !a.Quiet) cli.Err.WriteLine(note);
        var warnings = new List<string>();
        void Warn(string w) { warnings.Add(w); if (!a.Quiet) cli.Warn(w); }

        // The first thing that touches libtorch: the device decides which libtorch loads (a CUDA one when asked for).
        var device = DeviceSpec.Parse(a.Device ?? "auto").Resolve();
        if (a.Verbose) cli.Err.WriteLine(TorchRuntime.GetInfo().Describe(device));
        if (a.Threads is { } n) TorchRuntime.SetThreads(n);

        // Model: a local folder as it is, a Hub id through the cache (downloading what is missing); components and
        // adapters from elsewhere.
        var dtype = DTypeChoice.Resolve(plan.Model.DType, device);
        var (folder, options, model) = await PipelineSetup.ResolveAsync(cli, a.Quiet, plan.Model with { DType = DTypeChoice.Name(dtype) },
            new PipelineOptions { KeepLoaded = false, DType = dtype, Device = device, Offload = OffloadPolicy.Parse(a.Offload ?? "none") }, a.Loras, ct).ConfigureAwait(false);
        bool isLocal = Directory.Exists(plan.Model.Model);

        // One pipeline for the whole run: configs and tokenizer now, each model when its stage starts (and freed
        // after it: T5 once every prompt is encoded; the transformer and the VAE after the last batch).
        using var pipe = PipelineSetup.Open(folder, options);
        foreach (var w in pipe.Warnings) Warn(w);
        if (MemoryCheck.Warning(pipe.Folder!, model.Variant, dtype, allLoaded: plan.Batches.Count > 1) is { } memory) Warn(memory);

        // Resolve every default from the model (configs only: cheap) and check what only the model can tell.
        var batches = new List<Batch>();
        RgbImage? source = null;
        // Image-to-image: the source at the size the run uses (--resize-to-fit needs the model's size).
        if (plan.Image is { } input)
        {
            if (input.Warning is not null) Warn(input.Warning);
            source = input.Fit(plan.Batches[0].Settings, pipe);
        }
        foreach (var b in plan.Batches)
        {
            var s = source is null ? b.Settings : b.Settings with { Width = source.Width, Height = source.Height };
            s.Validate(GenerationLimits.Cli);
            try { batches.Add(b with { Settings = s.Resolve(pipe) }); }
            catch (ArgumentException e) { throw new UsageException(OptionText(e)); }
        }
        var first = batches[0].Settings;
        if (batches.Any(b => b.Settings.Guidance <= 1 && !string.IsNullOrEmpty(b.Settings.NegativePrompt)))
            Warn($"the negative prompt has no effect with guidance {first.Guidance?.ToString(CultureInfo.InvariantCulture)} (it is only used above 1); raise --guidance to use it.");
        if (!a.Quiet)
            cli.Err.WriteLine($"seed {first.Seed}{(batches.Count > 1 ? $" (batch b uses {first.Seed} + b)" : "")}, {first.Width}x{first.Height}, " +
                              $"{first.Steps} steps of {first.Scheduler}, guidance {first.Guidance?.ToString(CultureInfo.InvariantCulture)}, {model.DType}" +
                              (plan.Image is { } src
                                  ? $", image-to-image from {Path.GetFileName(src.Path)} ({src.Image.Width}x{src.Image.Height}" +
                                    $"{(source!.Width != src.Image.Width || source.Height != src.Image.Height ? $" resized to {source.Width}x{source.Height}" : "")}) " +
                                    $"at strength {first.Strength?.ToString(CultureInfo.InvariantCulture)}: {first.StepsRun()} steps run"
                                  : ""));
        using var imageTensor = source is null ? null : ImageToImage.Preprocess(source);

        using var previews = await PreviewSetup.CreateAsync(cli, a.Quiet, a.Preview, a.PreviewVae, a.PreviewFile, pipe, ct).ConfigureAwait(false);
        string previewPath = a.PreviewFile ?? PreviewSetup.DefaultFile(plan.Files[0]);
        var progress = GenerateProgress.Create(cli, a.Quiet);
        var timings = new Dictionary<string, double> { ["load"] = 0, ["encode"] = 0, ["denoise"] = 0, ["decode"] = 0, ["save"] = 0 };
        var saved = new List<Saved>();
        string modelLabel = $"{(isLocal ? Path.GetFileName(model.Model) : model.Model)} ({model.DType})";
        int totalSteps = batches.Sum(b => b.Settings.StepsRun()), stepsDone = 0;
        var requests = batches.Select(b => b.Settings.ToRequest() with { Image = imageTensor, Strength = b.Settings.Strength }).ToList();
        progress.Run(() =>
        {
            ct.ThrowIfCancellationRequested();
            var stepClock = Stopwatch.StartNew();
            int fileIndex = 0;
            pipe.GenerateMany(requests, (bi, result) =>
            {
                // 4. Save each batch's images as soon as they are decoded.
                using (result)
                {
                    var settings = batches[bi].Settings;
                    var clock = Stopwatch.StartNew();
                    var rgb = result.ToRgb8();
                    int before = saved.Count;
                    for (int i = 0; i < rgb.Length; i++)
                    {
                        if (batches[bi].OnlyImage is { } only && only != i) continue;
                        string file = plan.Files[fileIndex++];
                        progress.Begin(Stage.Save, Path.GetFileName(file));
                        // The same bytes pixart serve answers for this request (ImageFiles.EncodePng), written atomically.
                        // Control characters in the prompt are escaped in the metadata (PNG text cannot hold NUL).
                        PngWriter.WriteBytes(file, ImageFiles.EncodePng(settings, i, rgb[i], result.Width, result.Height, model));
                        saved.Add(new Saved(file, bi, i, settings.Prompts[i / settings.NumImages], settings.Seed!.Value));
                    }
                    timings["save"] += clock.Elapsed.TotalSeconds;
                    progress.End(Stage.Save, clock.Elapsed, saved.Count - before == 1 ? Path.GetFileName(saved[^1].File) : $"{saved.Count - before} images");
                }
            }, info =>
            {
                stepsDone++;
                if (previews is not null) PreviewSetup.WriteFrame(previews, info, previewPath);
                double perStep = timings["denoise"] + stepClock.Elapsed.TotalSeconds;
                perStep /= stepsDone;
                progress.Step(stepsDone, totalSteps, perStep, perStep * (totalSteps - stepsDone), batches.Count > 1 ? $"batch {info.Request + 1}/{batches.Count}" : null);
                return !ct.IsCancellationRequested;
            }, ct, e =>
            {
                var stage = e.Stage switch
                {
                    PipelineStage.Load => Stage.Load,
                    PipelineStage.Encode => Stage.Encode,
                    PipelineStage.Denoise => Stage.Denoise,
                    _ => Stage.Decode,
                };
                if (e.Elapsed is not { } elapsed)
                {
                    if (e.Stage == PipelineStage.Denoise) stepClock.Restart();
                    else progress.Begin(stage, e.Stage == PipelineStage.Load ? $"{modelLabel}: {e.Detail}" : e.Detail);
                    return;
                }
                timings[GenerateProgress.Name(stage)] += elapsed.TotalSeconds;
                if (e.Stage != PipelineStage.Denoise || stepsDone == totalSteps) progress.End(stage, TimeSpan.FromSeconds(e.Stage == PipelineStage.Denoise ? timings["denoise"] : elapsed.TotalSeconds));
            });
            return 0;
        });
        timings["seconds_per_step"] = timings["denoise"] / Math.Max(1, stepsDone);
        timings["total"] = total.Elapsed.TotalSeconds;

        if (a.Json)
        {
            var o = new JsonObject
            {
                ["files"] = new JsonArray(saved.Select(s => (JsonNode)s.File).ToArray()),
                ["seed"] = first.Seed,
                ["images"] = new JsonArray(saved.Select(s => (JsonNode)new JsonObject
                {
                    ["file"] = s.File,
                    ["prompt"] = s.Prompt,
                    ["seed"] = s.Seed,
                    ["batch"] = s.Batch,
                    ["index_in_batch"] = s.ImageIndex,
                }).ToArray()),
                ["width"] = first.Width,
                ["height"] = first.Height,
                ["steps"] = first.Steps,
                ["guidance"] = first.Guidance,
                ["scheduler"] = first.Scheduler,
                ["model"] = model.Model,
                ["model_revision"] = model.ModelRevision,
                ["dtype"] = model.DType,
                ["timings"] = new JsonObject(timings.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)Math.Round(kv.Value, 4)))),
                ["warnings"] = new JsonArray(warnings.Select(w => (JsonNode)w).ToArray()),
            };
            if (first.Strength is { } st)
            {
                o["strength"] = st;
                o["image_sha256"] = first.ImageSha256;
            }
            cli.Out.WriteLine(o.ToJsonString(new JsonSerializerOptions { WriteIndented = false, Encoder = GenerationSettings.JsonOptions.Encoder }));
        }
        else
        {
            foreach (var s in saved) cli.Out.WriteLine(a.Quiet ? s.File : $"Saved {s.File} (seed {s.Seed})");
        }
        return ExitCodes.Ok;
    }
}
