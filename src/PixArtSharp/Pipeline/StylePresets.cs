namespace PixArtSharp.Pipeline;

/// <summary>A prompt template ("{prompt}" is replaced) and the negative prompt that goes with it.</summary>
/// <param name="Name">The demo's name for the style, e.g. "Cinematic".</param>
/// <param name="Prompt">The template; "{prompt}" stands for the user's prompt.</param>
/// <param name="NegativePrompt">The style's negative prompt (the user's is appended to it).</param>
public sealed record StylePreset(string Name, string Prompt, string NegativePrompt);

/// <summary>
/// The ten style presets of PixArt-α's official demo (app.py, <c>style_list</c>), applied as its
/// <c>apply_style</c> does: the template's "{prompt}" becomes the prompt and the user's negative prompt is appended
/// to the style's. Names match case-insensitively; "none" is an alias of "(No style)".
/// </summary>
public static class StylePresets
{
    /// <summary>The name of the style that leaves prompts as they are.</summary>
    public const string DefaultName = "(No style)";

    /// <summary>Every preset, in the demo's order, the no-op style first.</summary>
    public static readonly IReadOnlyList<StylePreset> All =
    [
        new("(No style)", "{prompt}", ""),
        new("Cinematic",
            "cinematic still {prompt} . emotional, harmonious, vignette, highly detailed, high budget, bokeh, cinemascope, moody, epic, gorgeous, film grain, grainy",
            "anime, cartoon, graphic, text, painting, crayon, graphite, abstract, glitch, deformed, mutated, ugly, disfigured"),
        new("Photographic",
            "cinematic photo {prompt} . 35mm photograph, film, bokeh, professional, 4k, highly detailed",
            "drawing, painting, crayon, sketch, graphite, impressionist, noisy, blurry, soft, deformed, ugly"),
        new("Anime",
            "anime artwork {prompt} . anime style, key visual, vibrant, studio anime,  highly detailed",
            "photo, deformed, black and white, realism, disfigured, low contrast"),
        new("Manga",
            "manga style {prompt} . vibrant, high-energy, detailed, iconic, Japanese comic style",
            "ugly, deformed, noisy, blurry, low contrast, realism, photorealistic, Western comic style"),
        new("Digital Art",
            "concept art {prompt} . digital artwork, illustrative, painterly, matte painting, highly detailed",
            "photo, photorealistic, realism, ugly"),
        new("Pixel art",
            "pixel-art {prompt} . low-res, blocky, pixel art style, 8-bit graphics",
            "sloppy, messy, blurry, noisy, highly detailed, ultra textured, photo, realistic"),
        new("Fantasy art",
            "ethereal fantasy concept art of  {prompt} . magnificent, celestial, ethereal, painterly, epic, majestic, magical, fantasy art, cover art, dreamy",
            "photographic, realistic, realism, 35mm film, dslr, cropped, frame, text, deformed, glitch, noise, noisy, off-center, deformed, cross-eyed, closed eyes, bad anatomy, ugly, disfigured, sloppy, duplicate, mutated, black and white"),
        new("Neonpunk",
            "neonpunk style {prompt} . cyberpunk, vaporwave, neon, vibes, vibrant, stunningly beautiful, crisp, detailed, sleek, ultramodern, magenta highlights, dark purple shadows, high contrast, cinematic, ultra detailed, intricate, professional",
            "painting, drawing, illustration, glitch, deformed, mutated, cross-eyed, ugly, disfigured"),
        new("3D Model",
            "professional 3d model {prompt} . octane render, highly detailed, volumetric, dramatic lighting",
            "ugly, deformed, noisy, low poly, blurry, painting"),
    ];

    /// <summary>The preset called <paramref name="name"/>, or an ArgumentException listing the valid names.</summary>
    public static StylePreset Find(string? name)
    {
        if (string.IsNullOrWhiteSpace(name) || name.Trim().Equals("none", StringComparison.OrdinalIgnoreCase))
            return All[0];
        return All.FirstOrDefault(s => s.Name.Equals(name.Trim(), StringComparison.OrdinalIgnoreCase))
               ?? throw new ArgumentException(
                   $"Unknown style '{name}'. Choose one of: {string.Join(", ", All.Select(s => $"\"{s.Name}\""))}.", nameof(name));
    }

    /// <summary>The demo's apply_style: (template with the prompt, style negative + user negative).</summary>
    public static (string Prompt, string NegativePrompt) Apply(string? style, string prompt, string? negativePrompt)
    {
        var preset = Find(style);
        return (preset.Prompt.Replace("{prompt}", prompt), preset.NegativePrompt + (negativePrompt ?? ""));
    }
}
