namespace PixArtSharp.Text;

/// <summary>
/// A padded, truncated batch as the pipeline feeds T5: row-major <c>[BatchSize, MaxLength]</c> int64 ids and 0/1 mask,
/// plus each row's token count before truncation (including <c>&lt;/s&gt;</c>), which the pipeline uses to warn.
/// </summary>
internal sealed record TokenizedBatch(long[] InputIds, long[] AttentionMask, int BatchSize, int MaxLength, int[] UntruncatedCounts)
{
    public ReadOnlySpan<long> Row(int i) => InputIds.AsSpan(i * MaxLength, MaxLength);

    public ReadOnlySpan<long> MaskRow(int i) => AttentionMask.AsSpan(i * MaxLength, MaxLength);

    public bool Truncated(int i) => UntruncatedCounts[i] > MaxLength;
}
