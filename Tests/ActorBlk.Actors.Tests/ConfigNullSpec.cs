using ActorBlk.Actors.Nbd;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Devices;
using Akka.Configuration;
using Akka.Configuration.Hocon;
using Xunit;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// HOCON's <c>null</c> (and <c>"null"</c>, which Akka reads the same way) for any <c>actorblk</c>
/// key, device entry key or stacked entry key is refused naming the key. An audit after
/// <c>actorblk.nbd.listen = null</c> ("Value cannot be null.", no key): every duration and whole
/// number failed with an ArgumentNullException, the on/off and choice keys of a device entry and
/// <c>remote.admin-secret-file</c> with a NullReferenceException, and other keys read '' or took a
/// default in silence (<c>topology.sysfs-root</c>, <c>metrics.prometheus</c>, <c>remote.admin-secret</c>).
/// </summary>
public sealed class ConfigNullSpec
{
    // Every plain key of reference.conf's actorblk section (a dispatcher's own settings aside), and every section.
    private static IEnumerable<(string Key, HoconValue Reference)> Settings()
    {
        var all = new List<(string, HoconValue)>();
        Walk("actorblk", ActorBlkSettings.DefaultConfig().GetValue("actorblk").GetObject());
        return all;

        void Walk(string path, HoconObject section)
        {
            foreach (var (key, value) in section.Items)
            {
                all.Add(($"{path}.{key}", value));
                if (value.IsObject() && key != "blocking-driver-dispatcher")
                {
                    Walk($"{path}.{key}", value.GetObject());
                }
            }
        }
    }

    public static TheoryData<string, string> PlainKeys()
    {
        var data = new TheoryData<string, string>();
        foreach (var (key, reference) in Settings().Where(s => s.Reference.IsString()))
        {
            data.Add(key, reference.GetString() is { Length: > 0 } text ? text : "none");
        }

        return data;
    }

    public static TheoryData<string> Sections() => [.. Settings().Where(s => s.Reference.IsObject()).Select(s => s.Key)];

    [Theory]
    [MemberData(nameof(PlainKeys))]
    public void Null_for_any_setting_is_refused_naming_the_key_and_its_default(string key, string fallback)
    {
        foreach (var value in new[] { "null", "\"null\"" })
        {
            var refused = Assert.Throws<ConfigurationException>(() => ActorBlkSettings.Create(ConfigurationFactory.ParseString($"{key} = {value}")));
            Assert.Equal($"{key}: null is not a value here; remove the key for the default ({fallback}).", refused.Message);
        }
    }

    // A list assigned over a section set before was kept beside it by Akka's parser and ignored.
    [Theory]
    [MemberData(nameof(Sections))]
    public void Null_or_a_list_for_a_section_is_refused_naming_it(string key)
    {
        var refused = Assert.Throws<ConfigurationException>(() => ActorBlkSettings.Create(ConfigurationFactory.ParseString($"{key} = null")));
        Assert.Equal($"{key}: a section {{ ... }} is expected, not 'null'.", refused.Message);
        refused = Assert.Throws<ConfigurationException>(() => ActorBlkSettings.Create(ConfigurationFactory.ParseString($"{key} {{ }}\n{key} = []")));
        Assert.Equal($"{key}: a section {{ ... }} is expected, not '[ ... ]'.", refused.Message);
    }

    // The readers other parts call on their own (an embedding application's NBD export, remoting).
    [Fact]
    public void The_readers_read_elsewhere_name_the_key_too()
    {
        static ConfigurationException Refused(Action read) => Assert.Throws<ConfigurationException>(read);
        static Config Hocon(string text) => ConfigurationFactory.ParseString(text);

        Assert.Equal("actorblk.nbd.max-in-flight: null is not a value here; remove the key for the default (128).",
            Refused(() => NbdExportSettings.Create(Hocon("actorblk.nbd.max-in-flight = null"))).Message);
        Assert.Equal("actorblk.nbd.stall-timeout: null is not a value here; remove the key for the default (60s).",
            Refused(() => NbdExportSettings.Create(Hocon("actorblk.nbd.stall-timeout = null"))).Message);
        Assert.Equal("actorblk.remote.max-inbound-connections: null is not a value here; remove the key for the default (1024).",
            Refused(() => InboundConnectionCap.Limits(Hocon("actorblk.remote.max-inbound-connections = null"), 4096)).Message);
        Assert.Equal("actorblk.remote.max-inflight-io-bytes: null is not a value here; remove the key for the default (64m).",
            Refused(() => RemoteSurface.MaxInflightIoBytes(Hocon("actorblk.remote.max-inflight-io-bytes = null"))).Message);
        Assert.Equal("actorblk.remote.admin-secret: null is not a value here; remove the key for the default (none).",
            Refused(() => RemoteSurface.ResolveSecret(Hocon("actorblk.remote.admin-secret = null"), create: false)).Message);
        Assert.Equal("actorblk.remote.admin-secret-file: null is not a value here; remove the key for the default (none).",
            Refused(() => RemoteSurface.ResolveSecret(Hocon("actorblk.remote.admin-secret-file = null"), create: false)).Message);
        foreach (var (value, shown) in new[] { ("null", "null"), ("{}", "{ ... }"), ("[]", "[ ... ]"), ("[on]", "[ ... ]"), ("banana", "banana") })
        {
            Assert.Equal($"akka.remote.dot-netty.tcp.enable-ssl: '{shown}' is not on or off.",
                Refused(() => ActorBlkRemoting.SslEnabled(Hocon($"akka.remote.dot-netty.tcp.enable-ssl = {value}"))).Message);
        }

        Assert.True(ActorBlkRemoting.SslEnabled(Hocon("akka.remote.dot-netty.tcp.enable-ssl = on")));
        Assert.False(ActorBlkRemoting.SslEnabled(Hocon("a = 1")));
    }

    // Akka's keys that ActorBlk reads: Akka reads null (and a list or a section) as no value, and
    // so did ActorBlk's readers: `hostname = null` with TLS on bound every interface, as "" does,
    // `maximum-frame-size = null` took 128000 in silence, `public-port = null` was read as unset
    // and `shutdown-timeout = null` failed the actor system with "Value cannot be null." (an audit).
    public static TheoryData<string, string> AkkaKeys() => new()
    {
        { "akka.remote.dot-netty.tcp.hostname", "every interface" },
        { "akka.remote.dot-netty.tcp.public-hostname", "the hostname" },
        { "akka.remote.dot-netty.tcp.public-port", "the port" },
        { "akka.remote.dot-netty.tcp.maximum-frame-size", "128000b" },
        { "akka.remote.dot-netty.tcp.ssl.certificate.path", "none" },
        { "akka.remote.dot-netty.tcp.ssl.certificate.password", "none" },
        { "akka.scheduler.shutdown-timeout", "5s" },
        { "akka.cluster.distributed-data.gossip-interval", "2s" },
    };

    [Theory]
    [MemberData(nameof(AkkaKeys))]
    public void Null_a_list_or_a_section_for_an_akka_key_ActorBlk_reads_is_refused_naming_the_key(string key, string fallback)
    {
        static string Refused(string text) =>
            Assert.Throws<ConfigurationException>(() => ActorBlkRemoting.CheckSettings(ConfigurationFactory.ParseString(text))).Message;

        foreach (var value in new[] { "null", "\"null\"" })
        {
            Assert.Equal($"{key}: null is not a value here; remove the key for the default ({fallback}).", Refused($"{key} = {value}"));
        }

        Assert.Equal($"{key}: a value is expected, not a list [ ... ].", Refused($"{key} = [1]"));
        Assert.Equal($"{key}: a value is expected, not a list [ ... ].", Refused($"{key} = []"));
        Assert.Equal($"{key}: a value is expected, not a section {{ ... }}.", Refused($"{key} {{ a = 1 }}"));
    }

    [Fact]
    public void The_values_valid_configurations_give_those_keys_are_read_as_before()
    {
        ActorBlkRemoting.CheckSettings(ConfigurationFactory.ParseString("a = 1"));
        ActorBlkRemoting.CheckSettings(ConfigurationFactory.ParseString("""
            akka.remote.dot-netty.tcp { hostname = 127.0.0.1, public-hostname = "", bind-hostname = "", public-port = 0, bind-port = "", port = 4053
              maximum-frame-size = 256000b, ssl.certificate { path = "/etc/actorblk/node\tcopy.pfx", password = "a\tb" } }
            akka.scheduler.shutdown-timeout = 5s
            akka.cluster.distributed-data.gossip-interval = 2s
            """));
        // bind-hostname and bind-port, which nothing reads (Akka.NET binds hostname:port), are not
        // looked at: a value there never stops a node (a review; they were checked).
        ActorBlkRemoting.CheckSettings(ConfigurationFactory.ParseString("akka.remote.dot-netty.tcp { bind-port = null, bind-hostname = [a] }"));
        var config = ConfigurationFactory.ParseString("akka.remote.dot-netty.tcp { public-port = 4100, bind-port = 4200, public-hostname = node1.example, bind-hostname = 10.0.0.5 }");
        Assert.Equal(4100, ActorBlkRemoting.OptionalPort(config, "public-port"));
        Assert.Equal(4200, ActorBlkRemoting.OptionalPort(config, "bind-port"));
        Assert.Null(ActorBlkRemoting.OptionalPort(ConfigurationFactory.ParseString("akka.remote.dot-netty.tcp.bind-port = \"\""), "bind-port"));
        Assert.Equal("node1.example", ActorBlkRemoting.HostName(config, "public-hostname"));
        Assert.Equal(string.Empty, ActorBlkRemoting.HostName(config));
        Assert.Equal(256000 - RemoteSurface.EnvelopeReserve, RemoteSurface.MaxRemoteData(ConfigurationFactory.ParseString("akka.remote.dot-netty.tcp.maximum-frame-size = 256000b")));
        Assert.Equal(128000 - RemoteSurface.EnvelopeReserve, RemoteSurface.MaxRemoteData(ConfigurationFactory.ParseString("a = 1")));
    }

    // The readers that existed, called where ActorBlk calls them: each took null for no value.
    [Fact]
    public void The_readers_of_akka_keys_refuse_null_where_ActorBlk_reads_them()
    {
        static ConfigurationException Refused(Action read) => Assert.Throws<ConfigurationException>(read);
        static Config Hocon(string text) => ConfigurationFactory.ParseString(text);

        // With TLS on, a null hostname passed the binding check and bound every interface.
        Assert.Equal("akka.remote.dot-netty.tcp.hostname: null is not a value here; remove the key for the default (every interface).",
            Refused(() => ActorBlkRemoting.CheckBinding(Hocon("akka.remote.dot-netty.tcp { enable-ssl = on, hostname = null }"))).Message);
        Assert.Equal("akka.remote.dot-netty.tcp.ssl.certificate.path: null is not a value here; remove the key for the default (none).",
            Refused(() => ActorBlkRemoting.TlsSetup(Hocon("akka.remote.dot-netty.tcp { enable-ssl = on, ssl.certificate.path = null }"))).Message);
        Assert.Equal("akka.remote.dot-netty.tcp.ssl.certificate.password: null is not a value here; remove the key for the default (none).",
            Refused(() => ActorBlkRemoting.TlsSetup(Hocon("akka.remote.dot-netty.tcp { enable-ssl = on, ssl.certificate { path = /nonexistent/node.pfx, password = null } }"))).Message);
        Assert.Equal("akka.remote.dot-netty.tcp.maximum-frame-size: null is not a value here; remove the key for the default (128000b).",
            Refused(() => RemoteSurface.MaxRemoteData(Hocon("akka.remote.dot-netty.tcp.maximum-frame-size = null"))).Message);
        Assert.Equal("akka.remote.dot-netty.tcp.maximum-frame-size: a value is expected, not a list [ ... ].",
            Refused(() => ActorBlkSettings.Create(Hocon("akka.remote.dot-netty.tcp.maximum-frame-size = [1]"))).Message);
        Assert.Equal("akka.remote.dot-netty.tcp.maximum-frame-size: 'banana' is not a size (e.g. 128000b).",
            Refused(() => ActorBlkSettings.Create(Hocon("akka.remote.dot-netty.tcp.maximum-frame-size = banana"))).Message);
        Assert.Equal("akka.scheduler.shutdown-timeout: null is not a value here; remove the key for the default (5s).",
            Refused(() => _ = new TimerQueueScheduler(Hocon("akka.scheduler.shutdown-timeout = null"), Akka.Event.NoLogger.Instance)).Message);
    }

    // A resolved substitution stays among the value's elements and reads as its value: taken for
    // unresolved, enable-ssl = ${x} read as off (a review). Only ${?X} with no X is absent.
    [Fact]
    public void A_substituted_value_is_read_as_its_value_and_an_unresolved_optional_one_as_absent()
    {
        Assert.True(ActorBlkRemoting.SslEnabled(ConfigurationFactory.ParseString("x = on\nakka.remote.dot-netty.tcp.enable-ssl = ${x}")));
        Assert.False(ActorBlkRemoting.SslEnabled(ConfigurationFactory.ParseString("akka.remote.dot-netty.tcp.enable-ssl = ${?ACTORBLK_SPEC_NO_SUCH_VARIABLE}")));
        Assert.Equal(4096, DeviceConfig.Parse(ConfigurationFactory.ParseString("s = 4096\nd { name = d0, bs = ${s} }").GetConfig("d")).BlockSize);
        var refused = Assert.Throws<DeviceOptionsException>(() => DeviceConfig.Parse(ConfigurationFactory.ParseString("n = null\nd { name = d0, path = ${n} }").GetConfig("d")));
        Assert.Equal("path", refused.Option);
    }

    public static TheoryData<string> DeviceKeys() => [.. DeviceConfig.Keys.Where(k => k != "driver").Order(StringComparer.Ordinal)];

    public static TheoryData<string> StackedKeys() => [.. StackedDeviceConfig.Keys.Order(StringComparer.Ordinal)];

    [Theory]
    [MemberData(nameof(DeviceKeys))]
    public void Null_for_a_device_key_is_refused_naming_the_key(string key)
    {
        var entry = key == "name" ? "name = null" : $"name = d0, {key} = null";
        var refused = Assert.Throws<DeviceOptionsException>(() => DeviceConfig.Parse(ConfigurationFactory.ParseString(entry)));
        Assert.Equal(key, refused.Option);
        Assert.Equal($"device '{(key == "name" ? "null" : "d0")}': option '{key}': null is not a value here; remove the key for the default.", refused.Message);
    }

    [Fact]
    public void Driver_null_is_the_null_driver() =>
        Assert.Equal("null", DeviceConfig.Parse(ConfigurationFactory.ParseString("name = d0, driver = null")).Driver);

    [Theory]
    [MemberData(nameof(StackedKeys))]
    public void Null_for_a_stacked_key_is_refused_naming_the_key(string key)
    {
        var entry = key switch
        {
            "name" => "name = null, type = mirror, members = [a, b]",
            "members" => "name = m0, type = mirror, members = null",
            _ => $"name = m0, type = mirror, members = [a, b], {key} = null",
        };
        var refused = Assert.Throws<DeviceOptionsException>(() => StackedDeviceConfig.Parse(ConfigurationFactory.ParseString(entry)));
        Assert.Equal(key, refused.Option);
        Assert.EndsWith($"option '{key}': null is not a value here; remove the key for the default.", refused.Message, StringComparison.Ordinal);
    }

    // Each failed with a NullReferenceException from Akka's GetStringList.
    [Theory]
    [InlineData("[a, null]", "member 1 is null, not a device name.")]
    [InlineData("[a, []]", "member 1 is a list [ ... ], not a device name.")]
    [InlineData("[{ x = 1 }, b]", "member 0 is a section { ... }, not a device name.")]
    public void A_member_that_is_not_a_name_is_refused(string members, string message)
    {
        var refused = Assert.Throws<DeviceOptionsException>(() => StackedDeviceConfig.Parse(ConfigurationFactory.ParseString($"name = m0, type = mirror, members = {members}")));
        Assert.Equal($"device 'm0': option 'members': {message}", refused.Message);
    }
}
