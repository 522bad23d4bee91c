using System.Text;

namespace PixArtSharp.Text;

/// <summary>
/// SentencePiece 0.1.97's unigram segmentation (<c>unigram::Model::Encode</c>, the lattice-free Viterbi) over an
/// already normalized string. Microsoft.ML.Tokenizers finds a best path too, but where two paths score the same
/// (e.g. "99"+"999"+"99" against "99"+"99"+"999" in a run of nines) it can pick the other one. SentencePiece keeps
/// the first candidate that reaches an end position, compares strictly, and mixes double sums with float storage;
/// the same arithmetic here picks the same path, down to rounding.
/// </summary>
internal sealed class UnigramViterbi
{
    private const float UnkPenalty = 10.0f;

    private readonly Dictionary<string, (int Id, double Score)> _pieces = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (int Id, double Score)>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private readonly int _maxPieceLength;
    private readonly float _unkScore;
    private readonly int _unkId;

    public UnigramViterbi(byte[] modelProto)
    {
        float minScore = float.MaxValue;
        float maxScore = 1.17549435e-38f; // FLT_MIN, as SentencePiece starts it (the smallest positive float)
        var entries = new List<(string Piece, float Score, int Type)>();
        foreach (var (field, payload) in Fields(modelProto, 0, modelProto.Length))
            if (field == 1) entries.Add(ParsePiece(modelProto, payload.Start, payload.End));

        foreach (var (_, score, type) in entries)
        {
            if (type != Normal) continue;
            minScore = Math.Min(minScore, score);
            maxScore = Math.Max(maxScore, score);
        }
        _unkId = entries.FindIndex(e => e.Type == Unknown);
        for (int id = 0; id < entries.Count; id++)
        {
            var (piece, score, type) = entries[id];
            // ModelInterface::InitializePieces puts NORMAL, USER_DEFINED and UNUSED pieces in the trie.
            // UNUSED ones are found there, then skipped.
            if (type is not (Normal or UserDefined)) continue;
            double s = type == UserDefined ? Encoding.UTF8.GetByteCount(piece) * (double)maxScore - 0.1 : score;
            _pieces[piece] = (id, s);
            _maxPieceLength = Math.Max(_maxPieceLength, piece.Length);
        }
        _lookup = _pieces.GetAlternateLookup<ReadOnlySpan<char>>();
        _unkScore = minScore - UnkPenalty;
    }

    private const int Normal = 1, Unknown = 2, UserDefined = 4, Unused = 5;

    /// <summary>Ids of the best path, one <c>&lt;unk&gt;</c> per unknown character (merging is the caller's).</summary>
    public List<int> Encode(string normalized)
    {
        int size = normalized.Length;
        var bestScore = new float[size + 1];
        var startsAt = new int[size + 1];
        var ids = new int[size + 1];
        Array.Fill(startsAt, -1);

        int start = 0;
        while (start < size)
        {
            float tillHere = bestScore[start];
            int charLen = char.IsHighSurrogate(normalized[start]) && start + 1 < size ? 2 : 1;
            bool hasSingleNode = false;
            int maxEnd = Math.Min(size, start + _maxPieceLength);
            for (int end = start + 1; end <= maxEnd; end++)
            {
                if (end < size && char.IsLowSurrogate(normalized[end])) continue;
                if (!_lookup.TryGetValue(normalized.AsSpan(start, end - start), out var piece)) continue;
                // `const auto score = IsUserDefined ? (length * max_score_ - 0.1) : GetScore(id)` is a double (0.1 is),
                // so the candidate is summed and compared in double, then stored as float.
                double candidate = (double)piece.Score + tillHere;
                if (startsAt[end] == -1 || candidate > bestScore[end])
                {
                    bestScore[end] = (float)candidate;
                    startsAt[end] = start;
                    ids[end] = piece.Id;
                }
                if (end - start == charLen) hasSingleNode = true;
            }
            if (!hasSingleNode)
            {
                int end = start + charLen;
                float candidate = _unkScore + tillHere;
                if (startsAt[end] == -1 || candidate > bestScore[end])
                {
                    bestScore[end] = candidate;
                    startsAt[end] = start;
                    ids[end] = _unkId;
                }
            }
            start += charLen;
        }

        var result = new List<int>();
        for (int end = size; end > 0; end = startsAt[end]) result.Add(ids[end]);
        result.Reverse();
        return result;
    }

    private static (string Piece, float Score, int Type) ParsePiece(byte[] buf, int start, int end)
    {
        string piece = "";
        float score = 0;
        int type = Normal;
        int pos = start;
        while (pos < end)
        {
            ulong key = ReadVarint(buf, ref pos);
            int field = (int)(key >> 3);
            switch ((int)(key & 7))
            {
                case 0:
                    ulong v = ReadVarint(buf, ref pos);
                    if (field == 3) type = (int)v;
                    break;
                case 1: pos += 8; break;
                case 2:
                    int len = (int)ReadVarint(buf, ref pos);
                    if (field == 1) piece = Encoding.UTF8.GetString(buf, pos, len);
                    pos += len;
                    break;
                case 5:
                    if (field == 2) score = BitConverter.ToSingle(buf, pos);
                    pos += 4;
                    break;
                default: throw new InvalidDataException("spiece.model: unsupported protobuf wire type.");
            }
        }
        return (piece, score, type);
    }

    // Top-level length-delimited fields of a protobuf message; other wire types are skipped.
    private static IEnumerable<(int Field, (int Start, int End) Payload)> Fields(byte[] buf, int start, int end)
    {
        int pos = start;
        while (pos < end)
        {
            ulong key = ReadVarint(buf, ref pos);
            int field = (int)(key >> 3);
            switch ((int)(key & 7))
            {
                case 0: ReadVarint(buf, ref pos); break;
                case 1: pos += 8; break;
                case 5: pos += 4; break;
                case 2:
                    int len = (int)ReadVarint(buf, ref pos);
                    yield return (field, (pos, pos + len));
                    pos += len;
                    break;
                default: throw new InvalidDataException("spiece.model: unsupported protobuf wire type.");
            }
        }
    }

    private static ulong ReadVarint(byte[] buf, ref int pos)
    {
        ulong result = 0;
        for (int shift = 0; ; shift += 7)
        {
            byte b = buf[pos++];
            result |= (ulong)(b & 0x7f) << shift;
            if (b < 0x80) return result;
        }
    }
}
