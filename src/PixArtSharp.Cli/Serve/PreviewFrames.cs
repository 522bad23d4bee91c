using PixArtSharp.Pipeline;
using static TorchSharp.torch;

namespace PixArtSharp.Cli.Serve;

/// <summary>
/// The server's live previews (<c>pixart serve --preview tiny</c>): after each step, one small frame per job of the
/// batch — the first image of each request, decoded by TAESD from the step's predicted clean latents — as a data: URL
/// that the job's progress (GET /v1/jobs/{id}, the SSE "progress" events) carries while it runs.
/// </summary>
public static class PreviewFrames
{
    /// <summary>Longest side of a server frame: small enough to send every step (≈ 10–30 kB as JPEG).</summary>
    public const int MaxSide = 384;

    private static int _failures;

    /// <summary>Tests only: a pause per previewed step, so a browser can be seen mid-run on the tiny model.</summary>
    internal static int TestStepDelayMs;

    /// <summary>One data: URL per job (rows b·n of the batch), or null when previews are off or this step has none.</summary>
    public static string?[]? For(PreviewDecoder? decoder, StepInfo step, int jobs, int imagesPerJob)
    {
        if (decoder is null || step.Denoised is not { } denoised) return null;
        if (TestStepDelayMs > 0) Thread.Sleep(TestStepDelayMs);
        try
        {
            var frames = new string?[jobs];
            for (int b = 0; b < jobs; b++)
            {
                int row = b * imagesPerJob;
                if (row >= denoised.shape[0]) break;
                using var latents = denoised[row..(row + 1)];
                frames[b] = decoder.DataUrl(latents, MaxSide);
            }
            return frames;
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // A preview must never sink the image: say it once, and go on without frames.
            if (Interlocked.Increment(ref _failures) == 1) Console.Error.WriteLine($"serve: a preview frame failed ({e.GetType().Name}: {e.Message}); continuing without it.");
            return null;
        }
    }
}
