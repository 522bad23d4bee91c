using System.Text.Json;
using System.Text.Json.Serialization;
using PixArtSharp.Pipeline;

namespace PixArtSharp.Cli.Serve;

/// <summary>
/// The body of POST /v1/images/generations: OpenAI's images API fields (prompt, n, size, response_format) plus
/// PixArt's (negative_prompt, width, height, steps, guidance, seed, style, scheduler). It maps onto the
/// <see cref="GenerationSettings"/> the CLI uses, and is validated by it.
/// </summary>
public sealed record ImagesRequest
{
    [JsonPropertyName("prompt")] public string? Prompt { get; init; }
    [JsonPropertyName("negative_prompt")] public string? NegativePrompt { get; init; }
    [JsonPropertyName("n")] public int? N { get; init; }
    [JsonPropertyName("width")] public int? Width { get; init; }
    [JsonPropertyName("height")] public int? Height { get; init; }
    /// <summary>OpenAI's "WIDTHxHEIGHT"; an alternative to width and height.</summary>
    [JsonPropertyName("size")] public string? Size { get; init; }
    [JsonPropertyName("steps")] public int? Steps { get; init; }
    /// <summary>Custom descending timesteps, as diffusers' <c>timesteps=[…]</c> (one-step DMD: [400]).</summary>
    [JsonPropertyName("timesteps")] public int[]? Timesteps { get; init; }
    /// <summary>T5 tokens per prompt (default: the pipeline's, α 120, Σ 300).</summary>
    [JsonPropertyName("max_sequence_length")] public int? MaxSequenceLength { get; init; }
    [JsonPropertyName("guidance")] public double? Guidance { get; init; }
    [JsonPropertyName("seed")] public long? Seed { get; init; }
    [JsonPropertyName("style")] public string? Style { get; init; }
    [JsonPropertyName("scheduler")] public string? Scheduler { get; init; }
    [JsonPropertyName("resolution_binning")] public bool? ResolutionBinning { get; init; }
    /// <summary>Image-to-image: the source PNG, JPEG or WebP as base64 (or a data: URL). The output has its size.</summary>
    [JsonPropertyName("image")] public string? Image { get; init; }
    /// <summary>Image-to-image: how much of the image is repainted, in (0, 1] (default 0.8).</summary>
    [JsonPropertyName("strength")] public double? Strength { get; init; }
    /// <summary>Image-to-image: scale the image to the model's pixel area, sides multiples of 16 (else they must be).</summary>
    [JsonPropertyName("resize_to_fit")] public bool? ResizeToFit { get; init; }
    /// <summary>Only "b64_json": the server never writes files, so it has no URLs to give.</summary>
    [JsonPropertyName("response_format")] public string? ResponseFormat { get; init; }
    /// <summary>Accepted for OpenAI client compatibility and ignored: the server runs the model it was started with.</summary>
    [JsonPropertyName("model")] public string? Model { get; init; }
    [JsonPropertyName("user")] public string? User { get; init; }
    /// <summary>OpenAI's output_format: "png" (default; the settings in its text chunks, as pixart generate writes it), "jpeg" or "webp".</summary>
    [JsonPropertyName("output_format")] public string? OutputFormat { get; init; }
    /// <summary>OpenAI's output_compression, 0–100 (default 100): the JPEG/WebP quality (WebP at 100 is lossless). Ignored for PNG.</summary>
    [JsonPropertyName("output_compression")] public int? OutputCompression { get; init; }
    /// <summary>
    /// OpenAI's quality (auto, low, medium, high, standard, hd): accepted and ignored — a documented no-op. The picture is
    /// decided by steps, guidance and the scheduler (the model's defaults unless given), which clients can send.
    /// </summary>
    [JsonPropertyName("quality")] public string? Quality { get; init; }
    /// <summary>OpenAI's moderation (auto, low): accepted and ignored — a documented no-op; this server runs no moderation model.</summary>
    [JsonPropertyName("moderation")] public string? Moderation { get; init; }

    /// <summary>OpenAI's quality values.</summary>
    public static readonly IReadOnlyList<string> QualityValues = ["auto", "low", "medium", "high", "standard", "hd"];
    /// <summary>OpenAI's moderation values.</summary>
    public static readonly IReadOnlyList<string> ModerationValues = ["auto", "low"];

    /// <summary>The answer's format and JPEG/WebP quality; checks output_format, output_compression, quality and moderation (400s naming the field).</summary>
    public (PixArtSharp.Imaging.ImageFormat Format, int Quality) Output()
    {
        var format = PixArtSharp.Imaging.ImageFormat.Png;
        if (OutputFormat is not null)
            format = (OutputFormat is "png" or "jpeg" or "webp" ? PixArtSharp.Imaging.ImageEncoder.TryParse(OutputFormat) : null)
                     ?? throw new ApiException(400, $"output_format '{OutputFormat}' is not supported; use \"png\", \"jpeg\" or \"webp\".", "output_format");
        if (OutputCompression is < 0 or > 100)
            throw new ApiException(400, $"output_compression must be between 0 and 100 (the JPEG/WebP quality), got {OutputCompression}.", "output_compression");
        if (Quality is not null && !QualityValues.Contains(Quality))
            throw new ApiException(400, $"quality '{Quality}' is not one of {string.Join(", ", QualityValues)} (it is accepted for OpenAI clients and has no effect here; use steps and guidance).", "quality");
        if (Moderation is not null && !ModerationValues.Contains(Moderation))
            throw new ApiException(400, $"moderation '{Moderation}' is not one of {string.Join(", ", ModerationValues)} (it is accepted for OpenAI clients and has no effect here).", "moderation");
        return (format, PixArtSharp.Imaging.ImageEncoder.CheckQuality(OutputCompression));
    }

    /// <summary>
    /// The answer in the asked format: PNG answers are the queue's as they are (the bytes pixart generate writes);
    /// JPEG/WebP re-encode each image's pixels (decoding the PNG is lossless) and say so in output_format.
    /// </summary>
    public ImagesResponse Encode(ImagesResponse response)
    {
        var (format, quality) = Output();
        if (format == PixArtSharp.Imaging.ImageFormat.Png) return response with { OutputFormat = "png" };
        var data = response.Data.Select(d => d with
        {
            B64Json = Convert.ToBase64String(PixArtSharp.Imaging.ImageEncoder.FromPng(Convert.FromBase64String(d.B64Json), format, quality)),
        }).ToList();
        return response with { Data = data, OutputFormat = OutputFormat };
    }

    /// <summary>The shared settings for this request, validated against the server's limits (throws ApiException).</summary>
    public GenerationSettings ToSettings(GenerationLimits limits)
    {
        if (Prompt is null) throw new ApiException(400, "'prompt' is required: the text describing the image.", "prompt");
        Output(); // output_format, output_compression, quality, moderation: checked before any work
        if (ResponseFormat is not null && ResponseFormat != "b64_json")
            throw new ApiException(400, $"response_format '{ResponseFormat}' is not supported; this server answers with \"b64_json\" only (it stores no files).", "response_format");
        if (Image is null && Strength is not null)
            throw new ApiException(400, "'strength' only applies to image-to-image: send 'image' too.", "strength");
        if (Image is null && ResizeToFit is not null)
            throw new ApiException(400, "'resize_to_fit' only applies to image-to-image: send 'image' too.", "resize_to_fit");
        if (Image is not null && (Width is not null || Height is not null || Size is not null))
            throw new ApiException(400, "With 'image' the output has the image's size: leave out width, height and size (or send \"resize_to_fit\": true).",
                Size is not null ? "size" : Width is not null ? "width" : "height");
        int? width = Width, height = Height;
        if (Size is not null)
        {
            if (Width is not null || Height is not null)
                throw new ApiException(400, "Give either 'size' or 'width' and 'height', not both.", "size");
            var parts = Size.Split('x', 'X');
            if (parts.Length != 2 || !int.TryParse(parts[0], out int w) || !int.TryParse(parts[1], out int h))
                throw new ApiException(400, $"size must look like \"1024x1024\" (WIDTHxHEIGHT), got \"{Size}\".", "size");
            (width, height) = (w, h);
        }
        var settings = new GenerationSettings
        {
            Prompts = [Prompt],
            NegativePrompt = NegativePrompt ?? "",
            Style = Style,
            Steps = Steps,
            Timesteps = Timesteps,
            MaxSequenceLength = MaxSequenceLength,
            Guidance = Guidance + 0.0, // -0 + 0 = +0: a guidance of -0 is recorded and printed as 0
            Seed = Seed,
            Width = width,
            Height = height,
            NumImages = N ?? 1,
            Scheduler = Scheduler,
            ResolutionBinning = ResolutionBinning ?? true,
            Strength = Strength,
        };
        try
        {
            settings.Validate(limits);
        }
        catch (ArgumentException e)
        {
            throw BadSetting(e, this);
        }
        return settings;
    }

    /// <summary>A settings check's ArgumentException as a 400 naming the field as this API calls it.</summary>
    public static ApiException BadSetting(ArgumentException e, ImagesRequest request)
    {
        string param = e.ParamName switch
        {
            "prompts" => "prompt",
            "num_images" => "n",
            "name" => "style", // StylePresets.Find names its own argument
            null => "",
            var p => p,
        };
        if (request.Size is not null && param is "width" or "height") param = "size";
        return new ApiException(400, StripParamSuffix(e.Message), param);
    }

    /// <summary>ArgumentException appends " (Parameter 'x')"; the JSON error carries the parameter separately.</summary>
    private static string StripParamSuffix(string message)
    {
        int i = message.LastIndexOf(" (Parameter '", StringComparison.Ordinal);
        return i > 0 ? message[..i] : message;
    }

    /// <summary>Every field the body may have, for the "Unknown field" message.</summary>
    public const string KnownFields = "prompt, negative_prompt, n, width, height, size, steps, timesteps, max_sequence_length, guidance, seed, style, scheduler, resolution_binning, " +
                                      "image, strength, resize_to_fit, response_format, output_format, output_compression, quality, moderation, model, user";

    public static readonly JsonSerializerOptions JsonOptions = new()
    {
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        AllowTrailingCommas = false,
        ReadCommentHandling = JsonCommentHandling.Disallow,
        MaxDepth = 8,
    };

    /// <summary>Parses the body; malformed JSON, wrong types and unknown fields are 400s naming the field.</summary>
    public static ImagesRequest Parse(ReadOnlySpan<byte> body)
    {
        // A UTF-8 byte-order mark is accepted and skipped (some Windows tools write one); JSON itself has none.
        if (body.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF])) body = body[3..];
        if (body.IsEmpty) throw new ApiException(400, "The request body is empty; send a JSON object such as {\"prompt\": \"a cat\"}.", "");
        RejectDuplicateKeys(body);
        try
        {
            return JsonSerializer.Deserialize<ImagesRequest>(body, JsonOptions)
                   ?? throw new ApiException(400, "The request body is JSON null; send a JSON object such as {\"prompt\": \"a cat\"}.", "");
        }
        catch (JsonException e)
        {
            string path = e.Path is { Length: > 2 } p ? p.TrimStart('$', '.') : "";
            bool unknown = e.Message.Contains("could not be mapped", StringComparison.Ordinal);
            // The parameter is the field (from the JSON path), never a fragment of the parser's message.
            string param = unknown ? ExtractQuoted(e.Message) ?? path : path;
            string what = unknown
                ? $"Unknown field '{param}'. Known fields: {KnownFields}."
                : path.Length > 0 ? $"The field '{path}' has the wrong type or is malformed JSON." : "The request body is not a valid JSON object.";
            throw new ApiException(400, what, param);
        }
    }

    /// <summary>
    /// A field given twice is a 400 naming it: parsers disagree on which copy wins (first, last, error), so a
    /// proxy that checked one copy could pass the other through.
    /// </summary>
    private static void RejectDuplicateKeys(ReadOnlySpan<byte> body)
    {
        var reader = new Utf8JsonReader(body, new JsonReaderOptions { MaxDepth = 8 });
        var seen = new Stack<HashSet<string>>();
        try
        {
            while (reader.Read())
            {
                switch (reader.TokenType)
                {
                    case JsonTokenType.StartObject: seen.Push(new HashSet<string>(StringComparer.Ordinal)); break;
                    case JsonTokenType.EndObject: seen.Pop(); break;
                    case JsonTokenType.PropertyName:
                        string name = reader.GetString()!;
                        if (!seen.Peek().Add(name))
                            throw new ApiException(400, $"The field '{name}' is given twice; send each field once.", name, "duplicate_field");
                        break;
                }
            }
        }
        catch (JsonException)
        {
            // Malformed JSON: the deserializer reports it with the field's path.
        }
    }

    private static string? ExtractQuoted(string message)
    {
        int a = message.IndexOf('\'');
        int b = a < 0 ? -1 : message.IndexOf('\'', a + 1);
        return b > a + 1 ? message[(a + 1)..b] : null;
    }
}

/// <summary>An error answered as OpenAI does: <c>{"error": {"message", "type", "param", "code"}}</c>.</summary>
public sealed class ApiException(int status, string message, string? param = null, string? code = null) : Exception(message)
{
    public int Status { get; } = status;
    public string? Param { get; } = param;
    public string? Code { get; } = code;

    public ErrorBody Body => new(new ErrorDetail(Message, Status switch
    {
        400 => "invalid_request_error",
        401 => "authentication_error",
        404 => "not_found_error",
        409 => "conflict_error",
        413 => "invalid_request_error",
        415 => "invalid_request_error",
        429 => "rate_limit_error",
        499 => "cancelled",
        _ => "server_error",
    }, string.IsNullOrEmpty(Param) ? null : Param, Code));
}

public sealed record ErrorBody([property: JsonPropertyName("error")] ErrorDetail Error);

public sealed record ErrorDetail(
    [property: JsonPropertyName("message")] string Message,
    [property: JsonPropertyName("type")] string Type,
    [property: JsonPropertyName("param")] string? Param,
    [property: JsonPropertyName("code")] string? Code);

/// <summary>One image of an answer.</summary>
public sealed record ImageData(
    [property: JsonPropertyName("b64_json")] string B64Json,
    [property: JsonPropertyName("seed")] long Seed,
    [property: JsonPropertyName("parameters")] string Parameters,
    [property: JsonPropertyName("revised_prompt")] string RevisedPrompt);

/// <summary>The answer of POST /v1/images/generations, shaped like OpenAI's images API.</summary>
public sealed record ImagesResponse(
    [property: JsonPropertyName("created")] long Created,
    [property: JsonPropertyName("data")] IReadOnlyList<ImageData> Data,
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("settings")] GenerationSettings Settings,
    [property: JsonPropertyName("batch_size")] int BatchSize)
{
    /// <summary>"png", "jpeg" or "webp" (OpenAI's output_format): what the b64_json images are.</summary>
    [JsonPropertyName("output_format")] public string? OutputFormat { get; init; }
}
