using System.Globalization;
using System.Text;

namespace ActorBlk.Hardware.Nbd;

/// <summary>
/// Wire constants of the Network Block Device protocol (fixed newstyle negotiation and the
/// transmission phase), with the names of the protocol document (NetworkBlockDevice/nbd
/// <c>doc/proto.md</c>). Every integer on the wire is big-endian.
/// </summary>
public static class NbdProtocol
{
    /// <summary>The IANA-assigned NBD port.</summary>
    public const int DefaultPort = 10809;

    /// <summary>"NBDMAGIC": the first eight bytes the server sends.</summary>
    public const ulong InitMagic = 0x4e42444d41474943;

    /// <summary>"IHAVEOPT": newstyle negotiation; also the magic before every client option.</summary>
    public const ulong OptionMagic = 0x49484156454F5054;

    /// <summary>The magic before every option reply.</summary>
    public const ulong ReplyMagic = 0x0003e889045565a9;

    /// <summary>The magic of a transmission request.</summary>
    public const uint RequestMagic = 0x25609513;

    /// <summary>The magic of a simple reply.</summary>
    public const uint SimpleReplyMagic = 0x67446698;

    /// <summary>The magic of a structured reply chunk.</summary>
    public const uint StructuredReplyMagic = 0x668e33ef;

    /// <summary>Bytes of a transmission request header.</summary>
    public const int RequestHeaderLength = 28;

    /// <summary>
    /// Whether <paramref name="input"/>, a client's unread requests (compact headers, each write
    /// followed by its payload) after <paramref name="skip"/> bytes of a payload still to read,
    /// holds an <c>NBD_CMD_DISC</c>. False at a bad magic (framing lost) or when the input ends.
    /// </summary>
    public static bool HoldsDisconnect(ReadOnlySpan<byte> input, long skip)
    {
        var at = skip;
        while (at + RequestHeaderLength <= input.Length)
        {
            var header = input.Slice((int)at, RequestHeaderLength);
            if (System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(header) != RequestMagic)
            {
                return false;
            }

            var command = (NbdCommand)System.Buffers.Binary.BinaryPrimitives.ReadUInt16BigEndian(header[6..]);
            if (command == NbdCommand.Disconnect)
            {
                return true;
            }

            at += RequestHeaderLength + (command == NbdCommand.Write ? System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(header[24..]) : 0);
        }

        return false;
    }

    /// <summary>Bytes of a simple reply header.</summary>
    public const int SimpleReplyHeaderLength = 16;

    /// <summary>Bytes of a structured reply chunk header.</summary>
    public const int StructuredReplyHeaderLength = 20;

    /// <summary>Bytes of an option request header (magic, option, length).</summary>
    public const int OptionHeaderLength = 16;

    /// <summary>Bytes of an option reply header (magic, option, type, length).</summary>
    public const int OptionReplyHeaderLength = 20;

    /// <summary>The zero padding after the export size and flags of <c>NBD_OPT_EXPORT_NAME</c> unless NO_ZEROES was agreed.</summary>
    public const int ExportNamePadding = 124;

    /// <summary>The longest string (export name, description, context) the protocol allows.</summary>
    public const int MaxStringLength = 4096;

    // Names shown in a message: the first ShownChars characters, the rest elided.
    private const int ShownChars = 64;

    /// <summary>
    /// Why <paramref name="utf8"/> is not a valid protocol string (a name or a query from the
    /// client), or null: "a string MUST NOT contain NUL characters ... and MUST be no longer than
    /// 4096 bytes".
    /// </summary>
    internal static string? BadString(ReadOnlySpan<byte> utf8) =>
        utf8.Length > MaxStringLength ? $"is {utf8.Length} bytes long, over the protocol's {MaxStringLength}"
        : utf8.Contains((byte)0) ? "contains a NUL character"
        : !System.Text.Unicode.Utf8.IsValid(utf8) ? "is not UTF-8"
        : null;

    /// <summary>
    /// A name the client sent, for a message that goes back to it or into the log: quoted, its
    /// control characters escaped, and cut after 64 characters, so the message stays a short
    /// protocol string (an outside audit: a 4,096-byte name made a 4,114-byte error, and libnbd
    /// dropped the connection on it instead of reporting an unknown export).
    /// </summary>
    internal static string Shown(string name)
    {
        var builder = new System.Text.StringBuilder(Math.Min(name.Length, ShownChars) + 24);
        builder.Append('\'');
        var shown = 0;
        var total = 0;
        foreach (var rune in name.EnumerateRunes())
        {
            if (total++ >= ShownChars)
            {
                continue;
            }

            shown++;
            if (rune.Value is '\'' or '\\')
            {
                builder.Append('\\').Append((char)rune.Value);
            }
            else if (Rune.GetUnicodeCategory(rune) is UnicodeCategory.Control or UnicodeCategory.Format
                or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator)
            {
                var escape = rune.Value <= 0xFF ? $"\\x{rune.Value:x2}" : $"\\u{{{rune.Value:x}}}";
                builder.Append(escape);
            }
            else
            {
                builder.Append(rune.ToString());
            }
        }

        builder.Append('\'');
        if (total > shown)
        {
            builder.Append(CultureInfo.InvariantCulture, $"... ({total} characters)");
        }

        return builder.ToString();
    }

    /// <summary>
    /// <paramref name="text"/> as a protocol string: UTF-8, NUL characters replaced, cut at a
    /// character boundary to at most <see cref="MaxStringLength"/> bytes.
    /// </summary>
    internal static byte[] StringBytes(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text.Replace('\0', '?'));
        if (bytes.Length <= MaxStringLength)
        {
            return bytes;
        }

        var cut = MaxStringLength;
        while ((bytes[cut] & 0xC0) == 0x80)
        {
            cut--;
        }

        return bytes[..cut];
    }

    /// <summary>
    /// 32 MiB: "any payload not exceeding 2^25 (33,554,432) bytes SHOULD NOT be considered a denial
    /// of service attack, even if that length is larger than the advertised maximum payload size".
    /// </summary>
    public const int MaxTolerablePayload = 1 << 25;

    /// <summary>The name of the one metadata context this server offers.</summary>
    public const string BaseAllocation = "base:allocation";

    /// <summary>The id under which <see cref="BaseAllocation"/> is selected.</summary>
    public const uint BaseAllocationId = 1;
}

/// <summary>Handshake flags the server sends (16 bits).</summary>
[Flags]
public enum NbdHandshakeFlags : ushort
{
    /// <summary>No flags.</summary>
    None = 0,

    /// <summary><c>NBD_FLAG_FIXED_NEWSTYLE</c>.</summary>
    FixedNewstyle = 1 << 0,

    /// <summary><c>NBD_FLAG_NO_ZEROES</c>.</summary>
    NoZeroes = 1 << 1,
}

/// <summary>Client flags (32 bits), the client's answer to the handshake flags.</summary>
[Flags]
public enum NbdClientFlags : uint
{
    /// <summary>No flags.</summary>
    None = 0,

    /// <summary><c>NBD_FLAG_C_FIXED_NEWSTYLE</c>.</summary>
    FixedNewstyle = 1 << 0,

    /// <summary><c>NBD_FLAG_C_NO_ZEROES</c>.</summary>
    NoZeroes = 1 << 1,
}

/// <summary>Transmission flags of an export (16 bits).</summary>
[Flags]
public enum NbdTransmissionFlags : ushort
{
    /// <summary>No flags.</summary>
    None = 0,

    /// <summary><c>NBD_FLAG_HAS_FLAGS</c>: always set.</summary>
    HasFlags = 1 << 0,

    /// <summary><c>NBD_FLAG_READ_ONLY</c>.</summary>
    ReadOnly = 1 << 1,

    /// <summary><c>NBD_FLAG_SEND_FLUSH</c>.</summary>
    SendFlush = 1 << 2,

    /// <summary><c>NBD_FLAG_SEND_FUA</c>.</summary>
    SendFua = 1 << 3,

    /// <summary><c>NBD_FLAG_ROTATIONAL</c>.</summary>
    Rotational = 1 << 4,

    /// <summary><c>NBD_FLAG_SEND_TRIM</c>.</summary>
    SendTrim = 1 << 5,

    /// <summary><c>NBD_FLAG_SEND_WRITE_ZEROES</c>.</summary>
    SendWriteZeroes = 1 << 6,

    /// <summary><c>NBD_FLAG_SEND_DF</c>.</summary>
    SendDf = 1 << 7,

    /// <summary><c>NBD_FLAG_CAN_MULTI_CONN</c>.</summary>
    CanMultiConn = 1 << 8,

    /// <summary><c>NBD_FLAG_SEND_RESIZE</c>.</summary>
    SendResize = 1 << 9,

    /// <summary><c>NBD_FLAG_SEND_CACHE</c>.</summary>
    SendCache = 1 << 10,

    /// <summary><c>NBD_FLAG_SEND_FAST_ZERO</c>.</summary>
    SendFastZero = 1 << 11,
}

/// <summary>Negotiation options (<c>NBD_OPT_*</c>).</summary>
public enum NbdOption : uint
{
    /// <summary><c>NBD_OPT_EXPORT_NAME</c>.</summary>
    ExportName = 1,

    /// <summary><c>NBD_OPT_ABORT</c>.</summary>
    Abort = 2,

    /// <summary><c>NBD_OPT_LIST</c>.</summary>
    List = 3,

    /// <summary><c>NBD_OPT_PEEK_EXPORT</c> (withdrawn).</summary>
    PeekExport = 4,

    /// <summary><c>NBD_OPT_STARTTLS</c>.</summary>
    StartTls = 5,

    /// <summary><c>NBD_OPT_INFO</c>.</summary>
    Info = 6,

    /// <summary><c>NBD_OPT_GO</c>.</summary>
    Go = 7,

    /// <summary><c>NBD_OPT_STRUCTURED_REPLY</c>.</summary>
    StructuredReply = 8,

    /// <summary><c>NBD_OPT_LIST_META_CONTEXT</c>.</summary>
    ListMetaContext = 9,

    /// <summary><c>NBD_OPT_SET_META_CONTEXT</c>.</summary>
    SetMetaContext = 10,

    /// <summary><c>NBD_OPT_EXTENDED_HEADERS</c>.</summary>
    ExtendedHeaders = 11,
}

/// <summary>Option reply types (<c>NBD_REP_*</c>).</summary>
public enum NbdReply : uint
{
    /// <summary><c>NBD_REP_ACK</c>.</summary>
    Ack = 1,

    /// <summary><c>NBD_REP_SERVER</c>: one export in a list.</summary>
    Server = 2,

    /// <summary><c>NBD_REP_INFO</c>.</summary>
    Info = 3,

    /// <summary><c>NBD_REP_META_CONTEXT</c>.</summary>
    MetaContext = 4,

    /// <summary><c>NBD_REP_ERR_UNSUP</c>: unknown option.</summary>
    ErrUnsupported = 0x80000001,

    /// <summary><c>NBD_REP_ERR_POLICY</c>.</summary>
    ErrPolicy = 0x80000002,

    /// <summary><c>NBD_REP_ERR_INVALID</c>: syntactically invalid option.</summary>
    ErrInvalid = 0x80000003,

    /// <summary><c>NBD_REP_ERR_PLATFORM</c>.</summary>
    ErrPlatform = 0x80000004,

    /// <summary><c>NBD_REP_ERR_TLS_REQD</c>.</summary>
    ErrTlsRequired = 0x80000005,

    /// <summary><c>NBD_REP_ERR_UNKNOWN</c>: no such export.</summary>
    ErrUnknown = 0x80000006,

    /// <summary><c>NBD_REP_ERR_SHUTDOWN</c>.</summary>
    ErrShutdown = 0x80000007,

    /// <summary><c>NBD_REP_ERR_BLOCK_SIZE_REQD</c>.</summary>
    ErrBlockSizeRequired = 0x80000008,

    /// <summary><c>NBD_REP_ERR_TOO_BIG</c>.</summary>
    ErrTooBig = 0x80000009,
}

/// <summary>Information items of <c>NBD_OPT_INFO</c> and <c>NBD_OPT_GO</c> (<c>NBD_INFO_*</c>).</summary>
public enum NbdInfo : ushort
{
    /// <summary><c>NBD_INFO_EXPORT</c>: size and transmission flags.</summary>
    Export = 0,

    /// <summary><c>NBD_INFO_NAME</c>.</summary>
    Name = 1,

    /// <summary><c>NBD_INFO_DESCRIPTION</c>.</summary>
    Description = 2,

    /// <summary><c>NBD_INFO_BLOCK_SIZE</c>: minimum, preferred and maximum block sizes.</summary>
    BlockSize = 3,
}

/// <summary>Transmission commands (<c>NBD_CMD_*</c>).</summary>
public enum NbdCommand : ushort
{
    /// <summary><c>NBD_CMD_READ</c>.</summary>
    Read = 0,

    /// <summary><c>NBD_CMD_WRITE</c>.</summary>
    Write = 1,

    /// <summary><c>NBD_CMD_DISC</c>.</summary>
    Disconnect = 2,

    /// <summary><c>NBD_CMD_FLUSH</c>.</summary>
    Flush = 3,

    /// <summary><c>NBD_CMD_TRIM</c>.</summary>
    Trim = 4,

    /// <summary><c>NBD_CMD_CACHE</c>.</summary>
    Cache = 5,

    /// <summary><c>NBD_CMD_WRITE_ZEROES</c>.</summary>
    WriteZeroes = 6,

    /// <summary><c>NBD_CMD_BLOCK_STATUS</c>.</summary>
    BlockStatus = 7,

    /// <summary><c>NBD_CMD_RESIZE</c>.</summary>
    Resize = 8,
}

/// <summary>Command flags (<c>NBD_CMD_FLAG_*</c>).</summary>
[Flags]
public enum NbdCommandFlags : ushort
{
    /// <summary>No flags.</summary>
    None = 0,

    /// <summary><c>NBD_CMD_FLAG_FUA</c>.</summary>
    Fua = 1 << 0,

    /// <summary><c>NBD_CMD_FLAG_NO_HOLE</c>.</summary>
    NoHole = 1 << 1,

    /// <summary><c>NBD_CMD_FLAG_DF</c>.</summary>
    DontFragment = 1 << 2,

    /// <summary><c>NBD_CMD_FLAG_REQ_ONE</c>.</summary>
    ReqOne = 1 << 3,

    /// <summary><c>NBD_CMD_FLAG_FAST_ZERO</c>.</summary>
    FastZero = 1 << 4,
}

/// <summary>Structured reply chunk types (<c>NBD_REPLY_TYPE_*</c>).</summary>
public enum NbdChunkType : ushort
{
    /// <summary><c>NBD_REPLY_TYPE_NONE</c>.</summary>
    None = 0,

    /// <summary><c>NBD_REPLY_TYPE_OFFSET_DATA</c>.</summary>
    OffsetData = 1,

    /// <summary><c>NBD_REPLY_TYPE_OFFSET_HOLE</c>.</summary>
    OffsetHole = 2,

    /// <summary><c>NBD_REPLY_TYPE_BLOCK_STATUS</c>.</summary>
    BlockStatus = 5,

    /// <summary><c>NBD_REPLY_TYPE_ERROR</c>.</summary>
    Error = 0x8001,

    /// <summary><c>NBD_REPLY_TYPE_ERROR_OFFSET</c>.</summary>
    ErrorOffset = 0x8002,
}

/// <summary>Error values on the wire (Linux errno numbers the protocol fixes).</summary>
public enum NbdError : uint
{
    /// <summary>Success.</summary>
    None = 0,

    /// <summary><c>EPERM</c>: a write to a read-only export.</summary>
    Perm = 1,

    /// <summary><c>EIO</c>.</summary>
    Io = 5,

    /// <summary><c>ENOMEM</c>.</summary>
    NoMemory = 12,

    /// <summary><c>EINVAL</c>.</summary>
    Invalid = 22,

    /// <summary><c>ENOSPC</c>.</summary>
    NoSpace = 28,

    /// <summary><c>EOVERFLOW</c>: a request longer than the maximum payload.</summary>
    Overflow = 75,

    /// <summary><c>ENOTSUP</c>: for example a fast zero the export cannot do fast.</summary>
    NotSupported = 95,

    /// <summary><c>ESHUTDOWN</c>: the export is going away.</summary>
    Shutdown = 108,
}

/// <summary>Flags of a <c>base:allocation</c> extent.</summary>
[Flags]
public enum NbdAllocationFlags : uint
{
    /// <summary>Allocated data.</summary>
    Data = 0,

    /// <summary><c>NBD_STATE_HOLE</c>.</summary>
    Hole = 1 << 0,

    /// <summary><c>NBD_STATE_ZERO</c>.</summary>
    Zero = 1 << 1,
}
