using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Sysfs;
using Akka.Actor;
using Akka.Event;

namespace ActorBlk.Actors;

/// <summary>
/// Protocol of the sysfs actor (<c>/user/actorblk/sysfs</c>): the node's attribute tree and CPU
/// hotplug, for clients on other nodes (<c>actorblk sysfs</c>, <c>actorblk hotplug</c>). Every
/// refusal comes back as <see cref="Failed"/> with the errno, never as a silent drop.
/// </summary>
public static class Sysfs
{
    /// <summary>The actor's name under the guardian.</summary>
    public const string ActorName = "sysfs";

    /// <summary>Lists the attribute paths that start with <paramref name="Prefix"/> (reply <see cref="Listing"/>).</summary>
    public sealed record List(string Prefix = "") : IActorBlkQuery;

    /// <summary>Attribute paths, sorted.</summary>
    public sealed record Listing(string[] Paths) : IActorBlkMessage;

    /// <summary>Reads an attribute (reply <see cref="Value"/> or <see cref="Failed"/>).</summary>
    public sealed record Read(string Path) : IActorBlkQuery;

    /// <summary>An attribute's contents: at most one 4096-byte page.</summary>
    public sealed record Value(string Path, string Text) : IActorBlkMessage;

    /// <summary>Writes an attribute (reply <see cref="Written"/> or <see cref="Failed"/>).</summary>
    public sealed record Write(string Path, string Text) : IActorBlkMessage;

    /// <summary>The write took effect; <paramref name="Text"/> is what the attribute reads now (empty for a write-only one, md's <c>md/new_dev</c>).</summary>
    public sealed record Written(string Path, string Text) : IActorBlkMessage;

    /// <summary>Takes a CPU offline or brings it online (reply <see cref="CpuTopologyProtocol.TopologyChanged"/> or <see cref="Failed"/>).</summary>
    public sealed record Hotplug(int Cpu, bool Online) : IActorBlkMessage;

    /// <summary>
    /// A refused operation: <paramref name="Errno"/> (ENOENT, EISDIR, ENOTDIR, EINVAL, ERANGE, EACCES, EBUSY, ENXIO, ENOSPC; EPERM for a write
    /// or hotplug from the network without the admin secret; ENAMETOOLONG; E2BIG for a listing too
    /// large for one remoting message) and why.
    /// </summary>
    public sealed record Failed(string Path, string Errno, string Message) : IActorBlkMessage;

    internal static Props Props(BlockLayer layer) => Akka.Actor.Props.Create(() => new SysfsActor(layer));
}

/// <summary>
/// Serves <see cref="Sysfs"/> messages. Reads are answered at once from the published snapshots
/// (they never wait for a re-map or a registration); writes and hotplug events may wait (a freeze),
/// so they run asynchronously and the answer is piped back.
/// </summary>
internal sealed class SysfsActor : ReceiveActor
{
    private readonly ILoggingAdapter _log = Context.GetLogger();

    public SysfsActor(BlockLayer layer)
    {
        // Bounds first (README, "Security"): a path longer than PATH_MAX or a value longer than a
        // page is refused before anything looks it up.
        Receive<Sysfs.List>(list => (list.Prefix?.Length ?? 0) > RemoteSurface.MaxPath,
            list => Sender.Tell(TooLong(list.Prefix!)));
        Receive<Sysfs.Read>(read => (read.Path?.Length ?? 0) > RemoteSurface.MaxPath, read => Sender.Tell(TooLong(read.Path!)));
        Receive<Sysfs.Write>(write => (write.Path?.Length ?? 0) > RemoteSurface.MaxPath, write => Sender.Tell(TooLong(write.Path!)));
        Receive<Sysfs.Write>(write => (write.Text?.Length ?? 0) > RemoteSurface.MaxValue,
            write => Sender.Tell(new Sysfs.Failed(write.Path ?? string.Empty, "EINVAL", $"the value is longer than {RemoteSurface.MaxValue} bytes")));
        Receive<RemoteSurface.AdminRefused>(refused =>
        {
            var path = refused.Request switch
            {
                Sysfs.Write w => w.Path ?? string.Empty,
                Sysfs.Hotplug h => $"devices/system/cpu/cpu{h.Cpu}/online",
                _ => string.Empty,
            };
            _log.Warning("sysfs: refused {Request} from {Sender}: {Reason}", refused.Request.GetType().Name, Sender.Path, refused.Reason);
            Sender.Tell(new Sysfs.Failed(path, "EPERM", refused.Reason));
        });
        var maxRemoteData = RemoteSurface.MaxRemoteData(Context.System.Settings.Config);
        Receive<Sysfs.List>(list =>
        {
            var paths = layer.ListAttributes(list.Prefix ?? string.Empty);
            if (paths.Count == 0 && !string.IsNullOrEmpty(list.Prefix))
            {
                // As ls on a path that does not exist: an unknown device or directory is ENOENT, not
                // an empty listing; a path through an attribute is ENOTDIR (it was ENOENT: a review).
                Sender.Tell(layer.EmptyListingErrno(list.Prefix) is AttributeErrno.ENOTDIR
                    ? new Sysfs.Failed(list.Prefix, "ENOTDIR", "not a directory")
                    : new Sysfs.Failed(list.Prefix, "ENOENT", "no attribute under this path"));
                return;
            }

            // A listing larger than one remoting message would be dropped by the transport and
            // its caller would wait for ever: refuse it, and say how to narrow it.
            var bytes = paths.Sum(p => (long)p.Length + 8);
            if (bytes > maxRemoteData && Sender is IActorRefScope { IsLocal: false })
            {
                Sender.Tell(new Sysfs.Failed(list.Prefix ?? string.Empty, "E2BIG",
                    $"{paths.Count} paths ({bytes} bytes) do not fit in one remoting message (at most {maxRemoteData}); list a narrower prefix"));
                return;
            }

            Sender.Tell(new Sysfs.Listing([.. paths]));
        });
        Receive<Sysfs.Read>(read =>
        {
            try
            {
                Sender.Tell(new Sysfs.Value(read.Path, layer.ReadAttribute(read.Path ?? string.Empty)));
            }
            catch (AttributeException ex)
            {
                Sender.Tell(new Sysfs.Failed(read.Path ?? string.Empty, ex.Errno.ToString(), ex.Reason));
            }
        });
        Receive<Sysfs.Write>(write =>
        {
            var path = write.Path ?? string.Empty;
            if (write.Text is null)
            {
                // A message without its value (a peer's malformed one): not a write of no bytes,
                // which is taken and changes nothing.
                Sender.Tell(new Sysfs.Failed(path, "EINVAL", "the write carries no value"));
                return;
            }

            WriteAsync(layer, path, write.Text).PipeTo(Sender);
        });
        Receive<Sysfs.Hotplug>(hotplug => HotplugAsync(layer, hotplug).PipeTo(Sender));
    }

    private static Sysfs.Failed TooLong(string path) =>
        new(path[..64] + "...", "ENAMETOOLONG", $"the path is longer than {RemoteSurface.MaxPath} bytes");

    private async Task<object> WriteAsync(BlockLayer layer, string path, string text)
    {
        try
        {
            await layer.WriteAttributeAsync(path, text).ConfigureAwait(false);
            _log.Info("sysfs: wrote '{Value}' to {Path}", text.TrimEnd('\n'), path);
            return new Sysfs.Written(path, ReadBack(layer, path));
        }
        catch (AttributeException ex)
        {
            return new Sysfs.Failed(path, ex.Errno.ToString(), ex.Reason);
        }
    }

    // What a written attribute reads now; nothing for a write-only one, whose write took effect all the same.
    private static string ReadBack(BlockLayer layer, string path)
    {
        try
        {
            return layer.ReadAttribute(path);
        }
        catch (AttributeException ex) when (ex.Errno == AttributeErrno.EACCES)
        {
            return string.Empty;
        }
    }

    private static async Task<object> HotplugAsync(BlockLayer layer, Sysfs.Hotplug hotplug)
    {
        var path = $"devices/system/cpu/cpu{hotplug.Cpu}/online";
        try
        {
            return await layer.SetCpuOnlineAsync(hotplug.Cpu, hotplug.Online).ConfigureAwait(false);
        }
        catch (ArgumentOutOfRangeException ex)
        {
            return new Sysfs.Failed(path, "ENOENT", ex.Message.Split(" (Parameter")[0]);
        }
        catch (InvalidOperationException ex)
        {
            // The kernel refuses to take the last online CPU down with EBUSY.
            return new Sysfs.Failed(path, "EBUSY", ex.Message);
        }
        catch (TimeoutException ex)
        {
            // The remap still waits for a device to drain (a slow disk) past drain-timeout plus
            // 10 s, and goes on. Unanswered, the exception became a Status.Failure, which the
            // remoting serializers refuse: `actorblk hotplug` waited 60 s and then said the node
            // did not answer, though the node was up and finished the remap (an outside slow-disk
            // audit).
            return new Sysfs.Failed(path, "EBUSY", ex.Message);
        }
    }
}
