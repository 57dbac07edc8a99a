using System.Globalization;

namespace ActorBlk.Hardware.Queues;

/// <summary>
/// Disk sequence numbers, as Linux's <c>diskseq</c> (<c>block/genhd.c</c>, <c>inc_diskseq</c>):
/// every queue created in this process takes the next number of one counter, so a device destroyed
/// and created again under the same name has another number, and "is this still the disk I
/// opened?" has an answer (<c>/sys/block/&lt;dev&gt;/diskseq</c>). The numbers are unique within a
/// process only; <see cref="BootId"/> names the process, as the kernel's
/// <c>/proc/sys/kernel/random/boot_id</c> names a boot, so the pair identifies a device across
/// processes and machines (the NBD server sends it in the export's description, and the NBD client
/// refuses to reconnect to another device under the same export name).
/// </summary>
public static class DiskSequence
{
    private static long s_last;

    /// <summary>A random id of this process, 32 lowercase hexadecimal digits.</summary>
    public static string BootId { get; } = Guid.NewGuid().ToString("N", CultureInfo.InvariantCulture);

    /// <summary>The next sequence number: 1 for the first queue of the process, then one more for each.</summary>
    public static ulong Next() => (ulong)Interlocked.Increment(ref s_last);

    /// <summary>The identity of the device numbered <paramref name="diskSeq"/> in this process: <c>diskseq N@boot-id</c>.</summary>
    public static string Identity(ulong diskSeq) => Format(diskSeq, BootId);

    /// <summary>An identity as <see cref="Identity"/> writes it, of any process: <c>diskseq N@boot-id</c>.</summary>
    /// <param name="diskSeq">The sequence number.</param>
    /// <param name="bootId">The process's boot id.</param>
    public static string Format(ulong diskSeq, string bootId) => string.Create(CultureInfo.InvariantCulture, $"diskseq {diskSeq}@{bootId}");

    /// <summary>
    /// Finds an identity written by <see cref="Identity"/> in <paramref name="text"/> (an NBD
    /// export's description); false when there is none (another server, or an older one).
    /// </summary>
    /// <param name="text">The text to search.</param>
    /// <param name="diskSeq">The sequence number found.</param>
    /// <param name="bootId">The boot id found.</param>
    public static bool TryParseIdentity(string? text, out ulong diskSeq, out string bootId)
    {
        diskSeq = 0;
        bootId = string.Empty;
        const string Marker = "diskseq ";
        var at = text?.LastIndexOf(Marker, StringComparison.Ordinal) ?? -1;
        if (at < 0)
        {
            return false;
        }

        var rest = text.AsSpan(at + Marker.Length);
        var sep = rest.IndexOf('@');
        if (sep <= 0 || !ulong.TryParse(rest[..sep], NumberStyles.None, CultureInfo.InvariantCulture, out var seq) || rest.Length < sep + 33)
        {
            return false;
        }

        var boot = rest.Slice(sep + 1, 32);
        foreach (var c in boot)
        {
            if (!char.IsAsciiHexDigitLower(c))
            {
                return false;
            }
        }

        diskSeq = seq;
        bootId = boot.ToString();
        return true;
    }
}
