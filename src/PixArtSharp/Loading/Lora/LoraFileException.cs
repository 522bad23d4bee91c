namespace PixArtSharp.Loading.Lora;

/// <summary>
/// A LoRA adapter that cannot be applied: corrupt, of an unknown layout, incomplete (a down/up pair or an alpha
/// missing), DoRA, or made for another model. The message names the adapter file and says what to do.
/// </summary>
public sealed class LoraFileException(string message, Exception? inner = null) : WeightFileException(message, inner);
