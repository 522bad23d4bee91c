namespace PixArtSharp.Loading.Gguf;

/// <summary>
/// A GGUF file that cannot be used: not GGUF, corrupt or truncated, of a tensor type or architecture PixArtSharp
/// does not read, or not the model asked for. A <see cref="WeightFileException"/>, so callers (the CLI's exit
/// code 4) treat it as any other bad weight file. The message names the file, the problem and the fix.
/// </summary>
public sealed class GgufFileException(string message, Exception? inner = null) : WeightFileException(message, inner);
