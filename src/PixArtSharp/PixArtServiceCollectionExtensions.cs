using Microsoft.Extensions.AI;
using PixArtSharp;

#pragma warning disable MEAI001 // IImageGenerator is experimental in Microsoft.Extensions.AI

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers PixArt as the app's <see cref="IImageGenerator"/>, as Microsoft.Extensions.AI users register one.</summary>
public static class PixArtServiceCollectionExtensions
{
    /// <summary>
    /// Adds a singleton <see cref="IImageGenerator"/> backed by a <see cref="PixArtImageGenerator"/> for
    /// <paramref name="model"/> (a Hub id or a local folder; loaded on the first request). Returns the
    /// <see cref="ImageGeneratorBuilder"/> so middleware (logging, OpenTelemetry, …) can be added with <c>Use</c>.
    /// </summary>
    public static ImageGeneratorBuilder AddPixArtImageGenerator(this IServiceCollection services, string model, PixArtImageGeneratorOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentException.ThrowIfNullOrWhiteSpace(model);
        return services.AddImageGenerator(_ => new PixArtImageGenerator(model, options), ServiceLifetime.Singleton);
    }
}
