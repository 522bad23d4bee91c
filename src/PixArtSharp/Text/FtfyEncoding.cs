namespace PixArtSharp.Text;

internal static class FtfyEncoding
{
    public static string FixEncoding(string text) => text;
}
