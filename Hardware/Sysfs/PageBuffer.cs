using System.Text;

namespace ActorBlk.Hardware.Sysfs;

/// <summary>
/// The one page a sysfs <c>show</c> may fill: at most <see cref="PageSize"/> - 1 characters
/// (blk-mq-semantics §11.1 item 6). A list that does not fit ends with <c>"\t...\n"</c>.
/// </summary>
public sealed class PageBuffer
{
    /// <summary>PAGE_SIZE.</summary>
    public const int PageSize = 4096;

    /// <summary>What a list ends with when the rest does not fit.</summary>
    public const string Ellipsis = "\t...\n";

    private readonly StringBuilder _text = new();
    private int _lastEntryStart = -1;
    private bool _full;

    /// <summary>The most characters a page holds (PAGE_SIZE - 1).</summary>
    public static int Limit => PageSize - 1;

    /// <summary>True once a list entry did not fit and the ellipsis ended the page.</summary>
    public bool IsTruncated => _full;

    /// <summary>The characters written so far.</summary>
    public int Length => _text.Length;

    /// <summary>Appends fixed text (a header); text beyond the page is cut.</summary>
    public PageBuffer Append(string text)
    {
        if (!_full)
        {
            _text.Append(text.AsSpan(0, Math.Min(text.Length, Limit - _text.Length)));
        }

        return this;
    }

    /// <summary>
    /// Appends one list entry when it fits; otherwise writes <see cref="Ellipsis"/> (stepping back one
    /// entry when even that does not fit) and refuses everything after.
    /// </summary>
    /// <returns>False once the page is full: stop listing.</returns>
    public bool TryAppendEntry(string entry)
    {
        if (_full)
        {
            return false;
        }

        if (_text.Length + entry.Length <= Limit)
        {
            _lastEntryStart = _text.Length;
            _text.Append(entry);
            return true;
        }

        if (_text.Length + Ellipsis.Length > Limit && _lastEntryStart >= 0)
        {
            _text.Length = _lastEntryStart;
        }

        _text.Append(Ellipsis);
        _full = true;
        return false;
    }

    /// <inheritdoc />
    public override string ToString() => _text.ToString();
}
