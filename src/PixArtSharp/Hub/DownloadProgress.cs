namespace PixArtSharp.Hub;

/// <summary>
/// Progress of one file of a download: <paramref name="File"/> is the path inside the repo
/// (e.g. <c>transformer/diffusion_pytorch_model.safetensors</c>). Reported when a file starts
/// (<paramref name="BytesDone"/> = bytes already there from an earlier, interrupted run), about ten times a second
/// while it downloads, and once when it is complete (<paramref name="BytesDone"/> = <paramref name="TotalBytes"/>;
/// files already in the cache report only that). A caller computes speed from successive reports.
/// </summary>
/// <param name="File">The file's path inside the repo.</param>
/// <param name="BytesDone">Bytes of the file on disk so far.</param>
/// <param name="TotalBytes">The file's size, as the Hub announced it.</param>
public sealed record DownloadProgress(string File, long BytesDone, long TotalBytes)
{
    /// <summary>Whether the whole file is on disk.</summary>
    public bool IsComplete => BytesDone >= TotalBytes;
}
