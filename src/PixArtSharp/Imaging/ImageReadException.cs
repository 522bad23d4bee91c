namespace PixArtSharp.Imaging;

/// <summary>
/// A user's image could not be read: not an image, a format other than PNG/JPEG/WebP, corrupt or truncated data,
/// or more pixels than allowed. The message names the file and says what is wrong; the CLI exits with code 2.
/// </summary>
public sealed class ImageReadException(string message, Exception? inner = null) : UserFileException(message, inner);
