using System.Globalization;

namespace PixArtSharp.Bench;

/// <summary>
/// Memory and load figures from Linux's /proc, read the way <c>ps</c> and <c>uptime</c> do. Elsewhere every value
/// is null (the benchmark then reports no RSS).
/// </summary>
internal static class ProcessStats
{
    /// <summary>Peak resident set size (VmHWM: anonymous memory plus the mapped file pages touched), in bytes.</summary>
    public static long? PeakRssBytes => StatusField("VmHWM:");

    /// <summary>Memory the kernel can give to new allocations without swapping (MemAvailable in /proc/meminfo), in bytes.</summary>
    public static long? MemAvailableBytes => KbField("/proc/meminfo", "MemAvailable:");

    /// <summary>Current resident set size (VmRSS), in bytes.</summary>
    public static long? RssBytes => StatusField("VmRSS:");

    /// <summary>
    /// Resets the peak (VmHWM) to the current RSS by writing 5 to /proc/self/clear_refs (Linux ≥ 4.0), so a stage's
    /// own peak can be read. Returns false where that is not allowed.
    /// </summary>
    public static bool ResetPeak()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
        {
            return false;
        }
    }

    /// <summary>The 1-minute load average (runnable threads; above the core count, timings are shared with others).</summary>
    public static double? LoadAverage1
    {
        get
        {
            try
            {
                var first = File.ReadAllText("/proc/loadavg").Split(' ')[0];
                return double.Parse(first, CultureInfo.InvariantCulture);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
            {
                return null;
            }
        }
    }

    private static long? StatusField(string name) => KbField("/proc/self/status", name);

    private static long? KbField(string file, string name)
    {
        try
        {
            foreach (var line in File.ReadLines(file))
            {
                if (!line.StartsWith(name, StringComparison.Ordinal)) continue;
                // "VmHWM:	  123456 kB", "MemAvailable:   123456 kB"
                var parts = line[name.Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return long.Parse(parts[0], CultureInfo.InvariantCulture) * 1024;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
        }
        return null;
    }
}
