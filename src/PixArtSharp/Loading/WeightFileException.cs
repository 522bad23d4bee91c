namespace PixArtSharp.Loading;

/// <summary>
/// A weight file or a model folder that cannot be used as it is: corrupt, truncated, missing, or not
/// matching its config. The message names the file (and the tensor, where there is one) and says what to do.
/// Front ends map this type and its subclasses to one exit code ("the model is broken": 4 in the CLI).
/// </summary>
/// <remarks>Not sealed: <see cref="Lora.LoraFileException"/> narrows it to adapter files.</remarks>
public class WeightFileException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// A model's config file holds a value PixArtSharp refuses (absurd, inconsistent, or a class or option this port
/// does not implement). <see cref="File"/> and <see cref="Key"/> name where; the message says what to change.
/// A <see cref="WeightFileException"/>, so it maps to the same "broken model" exit code.
/// </summary>
public sealed class ModelConfigException(string file, string? key, string message, Exception? inner = null)
    : WeightFileException(message, inner)
{
    /// <summary>The config file (or a description of the config when it did not come from a file).</summary>
    public string File { get; } = file;
    /// <summary>The offending key (e.g. <c>num_train_timesteps</c>), or null when the whole file is at fault.</summary>
    public string? Key { get; } = key;
}

/// <summary>
/// A stage produced NaN or infinite values (broken weights, or settings the model cannot run): the result is
/// garbage (an all-black image), so nothing is written. <see cref="Stage"/> names where it was found.
/// A <see cref="WeightFileException"/>, so it maps to the "broken model" exit code.
/// </summary>
public sealed class NonFiniteOutputException(string stage, string message) : WeightFileException(message)
{
    /// <summary>Where the values were found, e.g. "the final latents" or "the decoded image".</summary>
    public string Stage { get; } = stage;
}

/// <summary>A model folder, config or file that is missing or cannot be read (not a corrupt weight).</summary>
public sealed class ModelNotFoundException(string message, Exception? inner = null) : Exception(message, inner);
