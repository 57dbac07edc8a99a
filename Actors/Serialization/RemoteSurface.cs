using System.Runtime.Serialization;
using System.Security.Cryptography;
using System.Text;
using ActorBlk.Hardware.Interop;
using Akka.Actor;
using Akka.Configuration;

namespace ActorBlk.Actors.Serialization;

/// <summary>
/// What a node accepts from the network (README, "Security"). Every ActorBlk payload that arrives
/// goes through <see cref="Admit"/> after Hyperion has built it (from allow-listed types only):
/// <list type="bullet">
/// <item>its root type must be one of <see cref="InboundTypes"/>, the requests clients send and the
/// replies they receive; the node's internal protocol (registration, unregistration, queue start and
/// stop, tag-set joins, resets) never comes from the network;</item>
/// <item>an administrative request (<see cref="AdminTypes"/>: destroy, attribute writes, CPU hotplug)
/// is delivered only inside an <see cref="Authenticated"/> envelope carrying the node's admin
/// secret; without it the recipient gets <see cref="AdminRefused"/> and answers
/// <see cref="NotAuthorized"/>.</item>
/// </list>
/// Messages sent inside the process never pass through a serializer, so local callers (the
/// <see cref="BlockLayer"/> API, the hosting application) need no secret.
/// </summary>
public static class RemoteSurface
{
    /// <summary>Longest device name (Linux DISK_NAME_LEN).</summary>
    public const int MaxDeviceName = 32;

    /// <summary>Longest attribute path (PATH_MAX).</summary>
    public const int MaxPath = 4096;

    /// <summary>Longest attribute value (one page, as sysfs).</summary>
    public const int MaxValue = 4096;

    /// <summary>
    /// Bytes of a remote message set aside for the envelope (recipient and sender paths, manifest,
    /// the reply's other fields): an I/O whose data travels in a message may carry at most
    /// <c>maximum-frame-size</c> minus this.
    /// </summary>
    public const int EnvelopeReserve = 8192;

    /// <summary>The configuration key of the admin secret (inline).</summary>
    public const string SecretKey = "actorblk.remote.admin-secret";

    /// <summary>The configuration key of the file holding the admin secret.</summary>
    public const string SecretFileKey = "actorblk.remote.admin-secret-file";

    /// <summary>The configuration key of the bytes I/O messages from the network may hold in flight on a node.</summary>
    public const string MaxInflightIoBytesKey = "actorblk.remote.max-inflight-io-bytes";

    /// <summary>The default of <see cref="MaxInflightIoBytesKey"/> (64 MiB).</summary>
    public const long DefaultMaxInflightIoBytes = 64L << 20;

    /// <summary>The environment variable that overrides both (for clients).</summary>
    public const string SecretVariable = "ACTORBLK_ADMIN_SECRET";

    /// <summary>Request and reply types a node or a client accepts from the network.</summary>
    public static IReadOnlySet<Type> InboundTypes { get; } = new HashSet<Type>
    {
        // Requests.
        typeof(BlockLayer.Io), typeof(BlockLayer.ListDevices), typeof(BlockLayer.GetDeviceInfo), typeof(BlockLayer.Destroy),
        typeof(RequestQueueProtocol.Io), typeof(RequestQueueProtocol.GetInfo), typeof(SoftwareContextProtocol.Submit), typeof(SoftwareContextProtocol.GetStats),
        typeof(HardwareQueue.GetStats), typeof(TagSetProtocol.GetState), typeof(CpuTopologyProtocol.GetTopology), typeof(CpuTopologyProtocol.CpuOffline),
        typeof(CpuTopologyProtocol.CpuOnline), typeof(Sysfs.List), typeof(Sysfs.Read), typeof(Sysfs.Write), typeof(Sysfs.Hotplug),
        typeof(Authenticated), typeof(Clustering.ListClusterDevices),

        // Replies.
        typeof(BlockLayer.Destroyed), typeof(BlockLayer.NoSuchDevice), typeof(BlockLayer.DeviceBusy), typeof(BlockLayer.DeviceList),
        typeof(RequestQueueProtocol.Info), typeof(SoftwareContextProtocol.Completed), typeof(SoftwareContextProtocol.Rejected), typeof(SoftwareContextProtocol.Stats),
        typeof(HardwareQueue.Stats), typeof(TagSetProtocol.State), typeof(CpuTopologyProtocol.TopologyInfo), typeof(CpuTopologyProtocol.TopologyChanged),
        typeof(Sysfs.Listing), typeof(Sysfs.Value), typeof(Sysfs.Written), typeof(Sysfs.Failed), typeof(NotAuthorized),
        typeof(Clustering.ClusterDeviceList),

        // Registry entries, inside Distributed Data gossip between members (README, "Cluster").
        typeof(Clustering.ClusterNodeDevices), typeof(Clustering.ClusterDevice),
    };

    /// <summary>Requests that change the node: accepted from the network only when authenticated.</summary>
    public static IReadOnlySet<Type> AdminTypes { get; } = new HashSet<Type>
    {
        typeof(BlockLayer.Destroy), typeof(Sysfs.Write), typeof(Sysfs.Hotplug), typeof(CpuTopologyProtocol.CpuOffline), typeof(CpuTopologyProtocol.CpuOnline),
    };

    /// <summary>
    /// Decides what a payload that came from the network becomes: itself, the inner request of a
    /// valid <see cref="Authenticated"/> envelope, or <see cref="AdminRefused"/>.
    /// </summary>
    /// <exception cref="SerializationException">The root type is not one the network may send.</exception>
    public static object Admit(object message, byte[]? secret)
    {
        ArgumentNullException.ThrowIfNull(message);
        var type = message.GetType();
        if (!InboundTypes.Contains(type))
        {
            throw new SerializationException($"ActorBlk refuses {type.FullName} from the network.");
        }

        if (message is Authenticated envelope)
        {
            if (envelope.Message is null || !InboundTypes.Contains(envelope.Message.GetType()) || envelope.Message is Authenticated)
            {
                throw new SerializationException("ActorBlk refuses that authenticated payload from the network.");
            }

            return Verify(envelope.Credential, secret)
                ? envelope.Message
                : new AdminRefused(envelope.Message, "the admin credential is wrong");
        }

        return AdminTypes.Contains(type) ? new AdminRefused(message, "administrative requests from the network must be authenticated (README, \"Security\")") : message;
    }

    /// <summary>True when <paramref name="credential"/> is the secret (constant time); never when no secret is set.</summary>
    public static bool Verify(string? credential, byte[]? secret)
    {
        if (secret is not { Length: > 0 } || string.IsNullOrEmpty(credential) || credential.Length > 1024)
        {
            return false;
        }

        return CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(credential), secret);
    }

    /// <summary>
    /// The admin secret of <paramref name="config"/>: <c>ACTORBLK_ADMIN_SECRET</c> when
    /// <paramref name="fromEnvironment"/>, else <c>actorblk.remote.admin-secret</c>, else the
    /// contents of <c>actorblk.remote.admin-secret-file</c> (first line). With
    /// <paramref name="create"/> a missing file is created with a random secret, readable by its
    /// owner only. Null when there is none.
    /// </summary>
    /// <exception cref="AdminSecretException">The secret file exists but cannot be read, or (with
    /// <paramref name="create"/>) is missing and cannot be created.</exception>
    /// <exception cref="ConfigurationException">Either key is HOCON's null.</exception>
    public static string? ResolveSecret(Config config, bool create, bool fromEnvironment = false)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (fromEnvironment && Environment.GetEnvironmentVariable(SecretVariable) is { } fromEnv && !string.IsNullOrWhiteSpace(fromEnv))
        {
            return fromEnv.Trim();
        }

        // A secret of blanks is none (it was taken as "" by some checks and as a secret by others).
        // HOCON's null: the file's null failed with a NullReferenceException, the secret's was
        // taken for none (an audit); both are refused naming the key, as every actorblk key's is.
        if (config.GetString(SecretKey, string.Empty) is not { } inline)
        {
            throw ActorBlkSettings.NullValue(SecretKey, string.Empty);
        }

        if (!string.IsNullOrWhiteSpace(inline))
        {
            return inline.Trim();
        }

        var file = ExpandHome(config.GetString(SecretFileKey, string.Empty) ?? throw ActorBlkSettings.NullValue(SecretFileKey, string.Empty));
        if (string.IsNullOrWhiteSpace(file))
        {
            return null;
        }

        // Read, not looked for first: File.Exists is false for a file this process may not see
        // (a directory it cannot search) or read, and such a secret was taken for none, so the node
        // sealed nothing and took every cluster message. Only a missing file is no secret.
        if (TryReadSecretFile(file, out var existing))
        {
            return existing;
        }

        if (!create)
        {
            return null;
        }

        try
        {
            return CreateSecretFile(file);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException && ex is not AdminSecretException)
        {
            throw new AdminSecretException($"the admin secret file '{file}' ({SecretFileKey}) is missing and cannot be created: {ex.Message}", ex);
        }
    }

    // Written whole to a private temporary file, then linked into place with link(2), which
    // fails if the name is taken: a node that starts beside this one sees no file or the whole
    // secret, never the empty file a create-then-write showed for an instant (it then ran
    // without a secret, or refused what this one signed), and exactly one creator wins (.NET's
    // File.Move without overwrite checks and then renames, so two could each think they won).
    private static string? CreateSecretFile(string file)
    {
        var secret = Convert.ToHexString(RandomNumberGenerator.GetBytes(32)).ToLowerInvariant();
        var full = Path.GetFullPath(file);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var temporary = $"{full}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            WriteNew(temporary, secret);
            if (OperatingSystem.IsWindows())
            {
                File.Move(temporary, full, overwrite: false);
            }
            else if (LibC.Link(temporary, full) < 0)
            {
                var errno = LibC.LastErrno;
                if (errno == EEXIST)
                {
                    throw new IOException($"the admin secret file {full} exists already");
                }

                // A file system without hard links (vfat, some FUSE and network ones): create the
                // file in place, as before (a reader may then see it empty for an instant).
                WriteNew(full, secret);
            }

            return secret;
        }
        catch (IOException) when (File.Exists(full) || Directory.Exists(full))
        {
            // Another node created it first: use theirs (read here, not in the filter, where an
            // exception would be swallowed and the link's "exists already" reported instead).
            return TryReadSecretFile(full, out var theirs) ? theirs : throw new AdminSecretException($"the admin secret file '{full}' ({SecretFileKey}) went away while it was created", new FileNotFoundException(null, full));
        }
        finally
        {
            File.Delete(temporary);
        }
    }

    private const int EEXIST = 17;

    // Creates the file (it must not exist), readable by its owner only, holding the secret.
    private static void WriteNew(string file, string secret)
    {
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }

        using var stream = new FileStream(file, options);
        using var writer = new StreamWriter(stream);
        writer.WriteLine(secret);
    }

    // False when the file (or a directory on its path) does not exist; a file that exists but
    // cannot be read, or a directory, is an AdminSecretException.
    private static bool TryReadSecretFile(string file, out string? secret)
    {
        string text;
        try
        {
            text = File.ReadAllText(file);
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            secret = null;
            return false;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new AdminSecretException($"the admin secret file '{file}' ({SecretFileKey}) cannot be read: {ActorBlk.Hardware.FileProblems.Describe(file, ex)}", ex);
        }

        // An empty first line is no secret to use, and was taken for none (a `touch`ed file made
        // a node that sealed nothing and took everything): refused as unreadable is.
        var first = text.Split('\n')[0].Trim();
        secret = first.Length > 0
            ? first
            : throw new AdminSecretException($"the admin secret file '{file}' ({SecretFileKey}) is empty: its first line must hold the secret (remove the file and `actorblk serve` creates one)");
        return true;
    }

    /// <summary>The key of the largest message the remoting transport carries.</summary>
    public const string MaxFrameSizeKey = "akka.remote.dot-netty.tcp.maximum-frame-size";

    /// <summary>The largest data an I/O message may carry over remoting with <paramref name="config"/>.</summary>
    /// <exception cref="ConfigurationException"><see cref="MaxFrameSizeKey"/> is null, a list, a section or not a size.</exception>
    public static int MaxRemoteData(Config config) => (int)Math.Clamp(MaxFrameSize(config) - EnvelopeReserve, 0, int.MaxValue);

    /// <summary>
    /// <see cref="MaxFrameSizeKey"/> of <paramref name="config"/> in bytes (128000 when absent).
    /// HOCON's null, a list or a section was read as absent, here as by Akka, and a value that is
    /// not a size failed the first actor that read it (an audit): each is refused naming the key.
    /// </summary>
    /// <exception cref="ConfigurationException">The value is null, a list, a section or not a size.</exception>
    public static long MaxFrameSize(Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (ActorBlkSettings.AkkaText(config, MaxFrameSizeKey, "128000b") is null)
        {
            return 128000;
        }

        try
        {
            return config.GetByteSize(MaxFrameSizeKey, 128000) ?? 128000;
        }
        catch (Exception ex) when (ex is FormatException or OverflowException)
        {
            throw new ConfigurationException($"{MaxFrameSizeKey}: '{config.GetString(MaxFrameSizeKey)}' is not a size (e.g. 128000b).");
        }
    }

    /// <summary>
    /// The data bytes that reads and writes from the network may hold in flight on a node with
    /// <paramref name="config"/> (<see cref="MaxInflightIoBytesKey"/>): a request past it is answered
    /// with <c>BlockStatus.Resource</c> at once (README, "Security").
    /// </summary>
    /// <exception cref="ConfigurationException">The value is not a size, is 0, or is HOCON's null.</exception>
    public static long MaxInflightIoBytes(Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        var text = config.GetString(MaxInflightIoBytesKey, string.Empty) ?? throw ActorBlkSettings.NullValue(MaxInflightIoBytesKey, "64m");
        if (text.Length == 0)
        {
            return DefaultMaxInflightIoBytes;
        }

        if (!Hardware.Devices.ByteSize.TryParse(text, out var bytes))
        {
            throw new ConfigurationException($"{MaxInflightIoBytesKey}: '{text}' is not a size.");
        }

        return bytes > 0
            ? bytes
            : throw new ConfigurationException($"{MaxInflightIoBytesKey}: '{text}' is not positive (remote reads and writes need room for one request).");
    }

    private static string ExpandHome(string path) =>
        path.StartsWith("~/", StringComparison.Ordinal)
            ? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), path[2..])
            : path;

    /// <summary>
    /// An administrative request with the node's admin secret (<c>actorblk.remote.admin-secret</c>
    /// or the secret file). Over plain TCP the secret travels in clear: use TLS off loopback.
    /// </summary>
    /// <remarks>
    /// On the wire it is <see cref="AuthenticatedWire"/>: the request travels as bytes of its own,
    /// read back on its own, so an envelope can never hold another envelope. Sent as a graph, an
    /// envelope nested 14,000 deep (about 56 KB) overflowed the reader's stack and killed the node
    /// before anything could look at it (an outside audit).
    /// </remarks>
    public sealed record Authenticated(string Credential, IActorBlkMessage Message) : IActorBlkMessage, Akka.Util.ISurrogated
    {
        /// <inheritdoc />
        public override string ToString() => $"Authenticated {{ Message = {Message} }}";

        /// <inheritdoc />
        public Akka.Util.ISurrogate ToSurrogate(ActorSystem system) =>
            new AuthenticatedWire(Credential, system.Serialization.FindSerializerFor(Message).ToBinary(Message));
    }

    /// <summary>The wire form of <see cref="Authenticated"/>: the credential and the request's own serialized bytes.</summary>
    public sealed record AuthenticatedWire(string Credential, byte[] Message) : IActorBlkMessage, Akka.Util.ISurrogate
    {
        /// <inheritdoc />
        /// <exception cref="SerializationException">The request is not one an envelope may carry (an envelope, or not a message).</exception>
        public Akka.Util.ISurrogated FromSurrogate(ActorSystem system) =>
            new Authenticated(Credential, ActorBlkHyperionSerializer.Of(system).ReadEnveloped(Message));
    }

    /// <summary>An administrative request came from the network without a valid credential; the recipient refuses it.</summary>
    public sealed record AdminRefused(object Request, string Reason) : INoSerializationVerificationNeeded;

    /// <summary>The reply to an administrative request that was not authenticated: nothing changed.</summary>
    public sealed record NotAuthorized(string Request, string Reason) : IActorBlkMessage;
}

/// <summary>
/// The admin secret file (<c>actorblk.remote.admin-secret-file</c>) exists but cannot be read (a
/// file this process may not read, one in a directory it may not search, a directory) or its
/// first line is empty, or it is missing and cannot be created. A node refuses to seal or check cluster messages, or to start,
/// rather than run as a node without a secret.
/// </summary>
public sealed class AdminSecretException : IOException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">Names the file and why it cannot be read.</param>
    /// <param name="inner">The file system's error.</param>
    public AdminSecretException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>Creates the exception for a file that was read but holds no secret.</summary>
    /// <param name="message">Names the file and what is wrong with it.</param>
    public AdminSecretException(string message)
        : base(message)
    {
    }
}
