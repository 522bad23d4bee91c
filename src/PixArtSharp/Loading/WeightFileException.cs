namespace PixArtSharp.Loading;

/// <summary>
/// A weight file or a model folder that cannot be used as it is: corrupt, truncated, missing, or not
/// matching its config. The message names the file (and the tensor, where there is one) and says what to do.
/// </summary>
public class WeightFileException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A model folder, config or file that is missing or cannot be read (not a corrupt weight).</summary>
public sealed class ModelNotFoundException(string message, Exception? inner = null) : Exception(message, inner);
