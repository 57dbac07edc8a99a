using System.Net;
using System.Security.Cryptography.X509Certificates;
using Akka.Configuration;
using Akka.Remote.Transport.DotNetty;

namespace ActorBlk.Actors.Serialization;

/// <summary>
/// The remoting configuration every ActorBlk actor system uses, node or client (README,
/// "Security"): ActorBlk messages through the allow-listed Hyperion serializer, and Akka's
/// serializers that can name a type or stop an actor replaced by guarded ones under the same ids.
/// <c>WithActorBlk</c> applies it; a raw-HOCON system puts <see cref="SerializerConfig"/> in front of
/// its own configuration.
/// </summary>
public static class ActorBlkRemoting
{
    /// <summary>The serializer replacements and the ActorBlk binding.</summary>
    public static Config SerializerConfig { get; } = ConfigurationFactory.ParseString(SerializerHocon);

    /// <summary>
    /// Untrusted mode with the paths clients use (<c>/user/actorblk</c> and its sysfs actor) and the
    /// cluster daemon paths members use trusted for actor selections.
    /// </summary>
    public static Config UntrustedModeConfig { get; } = ConfigurationFactory.ParseString(UntrustedHocon);

    /// <summary>The paths <see cref="UntrustedModeConfig"/> trusts.</summary>
    public static IReadOnlyList<string> TrustedSelectionPaths { get; } =
    [
        "/user/actorblk", "/user/actorblk/sysfs",
        "/system/cluster/core/daemon", "/system/cluster/heartbeatReceiver", "/user/ddataReplicator",
    ];

    /// <summary>The key that allows binding a non-loopback address without TLS.</summary>
    public const string AllowInsecureKey = "actorblk.allow-insecure-remoting";

    /// <summary>The key that turns TLS on for Akka.Remote.</summary>
    public const string EnableSslKey = "akka.remote.dot-netty.tcp.enable-ssl";

    /// <summary>
    /// <c>akka.remote.dot-netty.tcp.enable-ssl</c> of <paramref name="config"/> (off when absent).
    /// Null, a list, a section or a word that is not on or off is refused naming the key: read
    /// raw, each failed <c>serve</c> with Akka's NotSupportedException and its stack (an audit).
    /// </summary>
    /// <exception cref="ConfigurationException">The value is not on or off.</exception>
    public static bool SslEnabled(Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        var value = config.HasPath(EnableSslKey) ? config.GetValue(EnableSslKey) : null;
        if (value is null || DeviceConfig.IsUnresolved(value))
        {
            return false;
        }

        if (!value.IsString() || value.GetString() is not { } text)
        {
            throw new ConfigurationException($"{EnableSslKey}: '{(value.IsObject() ? "{ ... }" : value.IsString() ? "null" : "[ ... ]")}' is not on or off.");
        }

        try
        {
            return value.GetBoolean();
        }
        catch (NotSupportedException)
        {
            throw new ConfigurationException($"{EnableSslKey}: '{text}' is not on or off.");
        }
    }

    /// <summary>
    /// <c>akka.remote.dot-netty.tcp.port</c> of <paramref name="config"/> (0 when absent, or an
    /// optional substitution with nothing to take), read before Akka reads it: null, a list or a
    /// section failed <c>serve</c> with "Value cannot be null." and a stack trace (an audit).
    /// </summary>
    /// <exception cref="ConfigurationException">The value is not a port (0 to 65535).</exception>
    public static int Port(Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        const string key = "akka.remote.dot-netty.tcp.port";
        var value = config.HasPath(key) ? config.GetValue(key) : null;
        if (value is null || DeviceConfig.IsUnresolved(value))
        {
            return 0;
        }

        var text = value.IsString() ? value.GetString() ?? "null" : value.IsObject() ? "{ ... }" : "[ ... ]";
        return int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port) && port <= 65535
            ? port
            : throw new ConfigurationException($"{key}: '{text}' is not a port (0 to 65535).");
    }

    /// <summary>The section of Akka's TCP transport, whose keys these readers take (<c>hostname</c>, <c>port</c>, ...).</summary>
    public const string TcpSection = "akka.remote.dot-netty.tcp";

    /// <summary>
    /// A host name key of <see cref="TcpSection"/> (<c>hostname</c> or <c>public-hostname</c>;
    /// <paramref name="name"/> without the section), "" when absent. HOCON's
    /// null, a list or a section is refused naming the key: Akka reads each as "" (every interface
    /// for <c>hostname</c>, even with TLS), and so did these checks (an audit). So is a control
    /// character, which no host name holds and which went into the node's address and its log.
    /// </summary>
    /// <exception cref="ConfigurationException">The value is null, a list, a section, or holds a control character.</exception>
    public static string HostName(Config config, string name = "hostname")
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(name);
        return ActorBlkSettings.AkkaText(config, $"{TcpSection}.{name}", name == "hostname" ? "every interface" : "the hostname") ?? string.Empty;
    }

    /// <summary>
    /// A port key of <see cref="TcpSection"/> other than <c>port</c> (<c>public-port</c>), null
    /// when absent or "". HOCON's null, a list, a section or a value that
    /// is not a port is refused naming the key: these checks took each for the key's absence.
    /// </summary>
    /// <exception cref="ConfigurationException">The value is null, a list, a section, or not a port (0 to 65535).</exception>
    public static int? OptionalPort(Config config, string name)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(name);
        var key = $"{TcpSection}.{name}";
        var text = ActorBlkSettings.AkkaText(config, key, "the port");
        if (string.IsNullOrEmpty(text))
        {
            return null;
        }

        return int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port) && port <= 65535
            ? port
            : throw new ConfigurationException($"{key}: '{text}' is not a port (0 to 65535).");
    }

    /// <summary>
    /// Checks, before the actor system starts, every key of Akka's own that ActorBlk reads for
    /// remoting (<see cref="TcpSection"/>'s <c>enable-ssl</c>, <c>port</c>, <c>hostname</c>,
    /// <c>public-hostname</c>, <c>public-port</c>, <c>maximum-frame-size</c>, <c>ssl.certificate.path</c> and <c>password</c>) and the
    /// scheduler's and Distributed Data's keys it reads: HOCON's null, a list or a section where a
    /// value belongs, and a control character where a file path or a password does not, are
    /// refused naming the key (README, "Configuration"). Not <c>bind-hostname</c> or
    /// <c>bind-port</c>: Akka.NET reads neither (Akka JVM's keys), and nor does ActorBlk.
    /// </summary>
    /// <exception cref="ConfigurationException">A key holds no value ActorBlk can read.</exception>
    public static void CheckSettings(Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        _ = SslEnabled(config);
        _ = Port(config);
        foreach (var name in (ReadOnlySpan<string>)["hostname", "public-hostname"])
        {
            _ = HostName(config, name);
        }

        _ = OptionalPort(config, "public-port");

        // Akka's DotNetty transport refuses a frame under 32,000 bytes, or one past an int, only
        // as it starts, with its own exception and stack trace.
        var frame = RemoteSurface.MaxFrameSize(config);
        if (frame is < 32000 or > int.MaxValue)
        {
            throw new ConfigurationException($"{RemoteSurface.MaxFrameSizeKey}: {frame} bytes is not a frame size Akka.Remote takes (32000 to {int.MaxValue} bytes).");
        }

        _ = CertificatePath(config);
        _ = CertificatePassword(config);
        _ = TimerQueueScheduler.ShutdownTimeout(config);
        _ = Clustering.DeviceRegistryActor.GossipInterval(config);
    }

    // ssl.certificate.path and password: a file path and a password may hold any character.
    private static string CertificatePath(Config config) =>
        ActorBlkSettings.AkkaText(config, $"{TcpSection}.ssl.certificate.path", string.Empty, anyCharacter: true) ?? string.Empty;

    private static string CertificatePassword(Config config) =>
        ActorBlkSettings.AkkaText(config, $"{TcpSection}.ssl.certificate.password", string.Empty, anyCharacter: true) ?? string.Empty;

    /// <summary>
    /// The TLS setup of <paramref name="config"/> when <c>akka.remote.dot-netty.tcp.enable-ssl</c> is
    /// on, else null: the PKCS#12 certificate of <c>ssl.certificate.path</c> (and <c>password</c>),
    /// mutual authentication, and (with <c>actorblk.remote.pin-certificate = on</c>, the default)
    /// peers accepted only when they present that same certificate, so a self-signed certificate
    /// shared by the nodes and their clients works and nothing else connects. With pinning off,
    /// Akka's chain validation applies (a certificate from a CA the machine trusts).
    /// </summary>
    /// <exception cref="ConfigurationException">TLS is on but the certificate is missing or unreadable, or its path or password is null, a list or a section.</exception>
    public static DotNettySslSetup? TlsSetup(Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (!SslEnabled(config))
        {
            return null;
        }

        var path = CertificatePath(config);
        var password = CertificatePassword(config);
        if (string.IsNullOrWhiteSpace(path))
        {
            throw new ConfigurationException("akka.remote.dot-netty.tcp.enable-ssl is on but ssl.certificate.path is empty (README, \"Security\").");
        }

        X509Certificate2 certificate;
        try
        {
            certificate = X509CertificateLoader.LoadPkcs12FromFile(path, string.IsNullOrEmpty(password) ? null : password, X509KeyStorageFlags.Exportable);
        }
        catch (Exception ex) when (ex is System.Security.Cryptography.CryptographicException or IOException or UnauthorizedAccessException)
        {
            throw new ConfigurationException($"cannot read the TLS certificate {path}: {ActorBlk.Hardware.FileProblems.Describe(path, ex)}");
        }

        if (!certificate.HasPrivateKey)
        {
            throw new ConfigurationException($"the TLS certificate {path} has no private key.");
        }

        var pin = config.GetBoolean("actorblk.remote.pin-certificate", true);
        return pin
            ? new DotNettySslSetup(certificate, suppressValidation: false, requireMutualAuthentication: true, CertificateValidation.PinnedCertificate(certificate.Thumbprint))
            : new DotNettySslSetup(certificate, suppressValidation: false, requireMutualAuthentication: true);
    }

    /// <summary>
    /// Checks where <paramref name="config"/> binds remoting. Loopback, or any address with TLS, is
    /// fine (null). Another address without TLS is refused unless
    /// <c>actorblk.allow-insecure-remoting = on</c>, which returns the warning to log.
    /// </summary>
    /// <exception cref="ConfigurationException">A non-loopback address without TLS, not explicitly allowed; or a <c>hostname</c> that <see cref="HostName"/> refuses.</exception>
    public static string? CheckBinding(Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        var host = HostName(config);
        if (SslEnabled(config) || IsLoopback(host))
        {
            return null;
        }

        var what = $"Akka.Remote binds {(string.IsNullOrWhiteSpace(host) ? "every interface" : host)} without TLS: any peer that reaches it can read and write devices and read the admin secret off the wire";
        if (!config.GetBoolean(AllowInsecureKey, false))
        {
            throw new ConfigurationException($"{what}. Enable TLS (akka.remote.dot-netty.tcp.enable-ssl, README \"Security\") or set {AllowInsecureKey} = on.");
        }

        return what + $" ({AllowInsecureKey} = on).";
    }

    private static bool IsLoopback(string host) =>
        string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase)
        || (IPAddress.TryParse(host, out var address) && IPAddress.IsLoopback(address));

    /// <summary>The HOCON of <see cref="SerializerConfig"/>.</summary>
    public const string SerializerHocon = """
        akka.actor {
          serializers {
            actorblk = "ActorBlk.Actors.Serialization.ActorBlkHyperionSerializer, ActorBlk.Actors"
            json = "ActorBlk.Actors.Serialization.ActorBlkJsonSerializer, ActorBlk.Actors"
            akka-misc = "ActorBlk.Actors.Serialization.GuardedMiscMessageSerializer, ActorBlk.Actors"
            akka-system-msg = "ActorBlk.Actors.Serialization.GuardedSystemMessageSerializer, ActorBlk.Actors"
            daemon-create = "ActorBlk.Actors.Serialization.RefusingDaemonMsgCreateSerializer, ActorBlk.Actors"
            proto = "ActorBlk.Actors.Serialization.GuardedProtobufSerializer, ActorBlk.Actors"
            akka-cluster = "ActorBlk.Actors.Serialization.GuardedClusterMessageSerializer, ActorBlk.Actors"
            akka-data-replication = "ActorBlk.Actors.Serialization.GuardedReplicatorMessageSerializer, ActorBlk.Actors"
            akka-replicated-data = "ActorBlk.Actors.Serialization.GuardedReplicatedDataSerializer, ActorBlk.Actors"
            akka-containers = "ActorBlk.Actors.Serialization.GuardedMessageContainerSerializer, ActorBlk.Actors"
            reliable-delivery = "ActorBlk.Actors.Serialization.GuardedReliableDeliverySerializer, ActorBlk.Actors"
          }
          serialization-bindings {
            "ActorBlk.Actors.Serialization.IActorBlkMessage, ActorBlk.Actors" = actorblk
          }
        }
        """;

    private const string UntrustedHocon = """
        akka.remote {
          untrusted-mode = on
          trusted-selection-paths = ["/user/actorblk", "/user/actorblk/sysfs", "/system/cluster/core/daemon", "/system/cluster/heartbeatReceiver", "/user/ddataReplicator"]
        }
        """;
}
