using static TorchSharp.torch;

namespace PixArtSharp.Pipeline;

/// <summary>
/// A bounded LRU of T5 outputs, one entry per prompt text after preprocessing, with its max length and clean flag
/// (<see cref="PipelineOptions.PromptCacheEntries"/>). A server sees the same prompts and the same negative prompt
/// ("" most often) again and again; a hit skips T5 for that text. Entries are copies of the rows T5 produced, so a hit
/// gives the same bits as the encode it saved. Each entry holds (1, L, d_model) fp32 states: 2 MB for α's 120 tokens,
/// 4.9 MB for Σ's 300. Thread-safe.
/// </summary>
internal sealed class PromptEmbeddingCache : IDisposable
{
    private readonly record struct Key(string Text, int MaxLength, bool Clean, bool PaddingStates);

    private sealed record Entry(Key Key, Tensor Embeds, Tensor Mask);

    private readonly object _gate = new();
    private readonly LinkedList<Entry> _order = new();   // most recently used first
    private readonly Dictionary<Key, LinkedListNode<Entry>> _entries = new();

    /// <summary>How many texts are kept at most.</summary>
    public int Capacity { get; }
    /// <summary>Texts served from the cache.</summary>
    public long Hits { get; private set; }
    /// <summary>Texts that had to be encoded.</summary>
    public long Misses { get; private set; }
    /// <summary>Texts held now.</summary>
    public int Count { get { lock (_gate) return _entries.Count; } }

    public PromptEmbeddingCache(int capacity)
    {
        if (capacity < 1) throw new ArgumentOutOfRangeException(nameof(capacity), capacity, "A prompt cache holds at least one entry (0 turns it off: do not create one).");
        Capacity = capacity;
    }

    /// <summary>
    /// Embeddings (B, L, D) and mask (B, L) for <paramref name="cleanedTexts"/> (already preprocessed): hits are
    /// copied from the cache, the distinct misses go to <paramref name="encode"/> in one batch, in order, and are kept.
    /// The results belong to the caller's dispose scope.
    /// </summary>
    /// <param name="paddingStates">Whether the states at the padding are T5's (diffusers') rather than 0: another entry.</param>
    public (Tensor Embeds, Tensor Mask) GetOrEncode(IReadOnlyList<string> cleanedTexts, int maxLength, bool clean, bool paddingStates,
                                                   Func<IReadOnlyList<string>, (Tensor Embeds, Tensor Mask)> encode)
    {
        ArgumentNullException.ThrowIfNull(cleanedTexts);
        ArgumentNullException.ThrowIfNull(encode);
        var keys = cleanedTexts.Select(t => new Key(t, maxLength, clean, paddingStates)).ToList();
        var embedRows = new Tensor[keys.Count];
        var maskRows = new Tensor[keys.Count];
        var missing = new List<Key>();
        lock (_gate)
        {
            for (int i = 0; i < keys.Count; i++)
            {
                if (_entries.TryGetValue(keys[i], out var node))
                {
                    _order.Remove(node);
                    _order.AddFirst(node);
                    // Copied under the lock: another caller's eviction may free the entry right after.
                    embedRows[i] = node.Value.Embeds.clone();
                    maskRows[i] = node.Value.Mask.clone();
                    Hits++;
                }
                else
                {
                    if (!missing.Contains(keys[i])) missing.Add(keys[i]);
                    Misses++;
                }
            }
        }

        if (missing.Count > 0)
        {
            var (embeds, mask) = encode(missing.Select(k => k.Text).ToList());
            var fresh = new List<Entry>(missing.Count);
            for (int m = 0; m < missing.Count; m++)
            {
                var e = embeds[m..(m + 1)];
                var k = mask[m..(m + 1)];
                for (int i = 0; i < keys.Count; i++)
                    if (keys[i] == missing[m]) (embedRows[i], maskRows[i]) = (e, k);
                // The cache's own copies, out of every dispose scope.
                fresh.Add(new Entry(missing[m], e.clone().DetachFromDisposeScope(), k.clone().DetachFromDisposeScope()));
            }
            lock (_gate)
            {
                foreach (var entry in fresh)
                {
                    if (_entries.ContainsKey(entry.Key)) { Free(entry); continue; }  // another caller encoded it meanwhile
                    _entries[entry.Key] = _order.AddFirst(entry);
                }
                while (_entries.Count > Capacity)
                {
                    var last = _order.Last!.Value;
                    _order.RemoveLast();
                    _entries.Remove(last.Key);
                    Free(last);
                }
            }
        }
        return (cat(embedRows, 0), cat(maskRows, 0));
    }

    private static void Free(Entry e)
    {
        e.Embeds.Dispose();
        e.Mask.Dispose();
    }

    /// <summary>Frees every entry (the counts stay).</summary>
    public void Clear()
    {
        lock (_gate)
        {
            foreach (var e in _order) Free(e);
            _order.Clear();
            _entries.Clear();
        }
    }

    public void Dispose() => Clear();
}
