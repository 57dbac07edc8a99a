using ActorBlk.Actors.Nbd;
using ActorBlk.Actors.Serialization;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers.Nbd;
using Akka.Configuration;
using Xunit;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// Control characters (tab and newline among them) in configured values. NUL was refused in a
/// file; every other one passed (a review): a device name with one reached the log and the columns
/// of <c>devices</c> and <c>iostat</c>, a host name the node's address, an NBD URI the export name
/// it asks for, and a refusal echoed the value over two lines. Every value that can never hold one
/// (a name, a host name, an address, a URI, a size, a choice) refuses it naming the key; a file
/// path and a secret keep it (Linux allows every byte but NUL in a path). Akka's reader trims
/// whitespace, tabs and newlines included, at either end of any value.
/// </summary>
public sealed class ConfigControlCharacterSpec
{
    private static Config Hocon(string text) => ConfigurationFactory.ParseString(text);

    // The device keys whose values are file paths.
    private static readonly string[] DevicePathKeys = ["path", "tls_ca"];

    public static TheoryData<string> DeviceKeys() => [.. DeviceConfig.Keys.Except(DevicePathKeys).Order(StringComparer.Ordinal)];

    [Theory]
    [MemberData(nameof(DeviceKeys))]
    public void A_control_character_in_a_device_key_is_refused_naming_the_key(string key)
    {
        foreach (var (hocon, code, shown) in new[] { ("a\\tb", "0009", "a\\x09b"), ("a\\nb", "000A", "a\\x0ab"), ("a\\u007fb", "007F", "a\\x7fb") })
        {
            var entry = key == "name" ? $"name = \"{hocon}\"" : $"name = d0, {key} = \"{hocon}\"";
            var refused = Assert.Throws<DeviceOptionsException>(() => DeviceConfig.Parse(Hocon(entry)));
            Assert.Equal(key, refused.Option);
            Assert.Equal($"device '{(key == "name" ? shown : "d0")}': option '{key}': '{shown}' holds a control character (U+{code}), which this key never takes.", refused.Message);
        }
    }

    [Fact]
    public void A_file_path_keeps_its_control_characters()
    {
        Assert.Equal("/var/lib/disk\t0.img", DeviceConfig.Parse(Hocon("name = d0, driver = file, path = \"/var/lib/disk\\t0.img\"")).Path);
        Assert.Equal("/etc/ca\nfile.pem", DeviceConfig.Parse(Hocon("name = d0, driver = nbd, uri = \"nbds://h/x\", tls_ca = \"/etc/ca\\nfile.pem\"")).TlsCa);
    }

    public static TheoryData<string> StackedKeys() => [.. StackedDeviceConfig.Keys.Order(StringComparer.Ordinal)];

    [Theory]
    [MemberData(nameof(StackedKeys))]
    public void A_control_character_in_a_stacked_key_or_a_member_is_refused_naming_the_key(string key)
    {
        var entry = key switch
        {
            "name" => "name = \"m\\t0\", type = mirror, members = [a, b]",
            "members" => "name = m0, type = mirror, members = [a, \"b\\nc\"]",
            _ => $"name = m0, type = mirror, members = [a, b], {key} = \"x\\ty\"",
        };
        var refused = Assert.Throws<DeviceOptionsException>(() => StackedDeviceConfig.Parse(Hocon(entry)));
        Assert.Equal(key, refused.Option);
        Assert.Contains("holds a control character", refused.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', refused.Message);
        Assert.DoesNotContain('\t', refused.Message);
    }

    // The node-wide keys of reference.conf whose values are file paths or the admin secret.
    private static readonly string[] AnyCharacterKeys =
    [
        "actorblk.topology.sysfs-root", "actorblk.nbd.certificate", "actorblk.nbd.key", "actorblk.cluster.registry.tls-ca",
        "actorblk.remote.admin-secret", "actorblk.remote.admin-secret-file",
    ];

    public static TheoryData<string> PlainKeys() => [.. ConfigNullSpec.PlainKeys().Select(row => (string)row[0]).Except(AnyCharacterKeys)];

    [Theory]
    [MemberData(nameof(PlainKeys))]
    public void A_control_character_in_a_node_wide_setting_is_refused_naming_the_key(string key)
    {
        var refused = Assert.Throws<ConfigurationException>(() => ActorBlkSettings.Create(Hocon($"{key} = \"1\\n0\"")));
        Assert.Equal($"{key}: '1\\x0a0' holds a control character (U+000A), which this key never takes.", refused.Message);
    }

    [Fact]
    public void A_file_path_or_the_admin_secret_may_hold_one()
    {
        foreach (var key in AnyCharacterKeys)
        {
            var error = Record.Exception(() => ActorBlkSettings.Create(Hocon($"{key} = \"/nonexistent/a\\tb\"")));
            Assert.True(error is null || !error.Message.Contains("control character", StringComparison.Ordinal), $"{key}: {error?.Message}");
        }
    }

    [Fact]
    public void The_nbd_section_read_alone_refuses_them_too()
    {
        Assert.Equal("actorblk.nbd.listen: '127.0.0.1:10809\\x0a[forged]' holds a control character (U+000A), which this key never takes.",
            Assert.Throws<ConfigurationException>(() => NbdExportSettings.Create(Hocon("actorblk.nbd.listen = \"127.0.0.1:10809\\n[forged]\""))).Message);
        Assert.Equal("actorblk.nbd.listen: '127.0.0.1:1\\x0a0809' is not ADDRESS:PORT (e.g. 127.0.0.1:10809, [::1]:10809), unix:PATH or off.",
            Assert.Throws<ConfigurationException>(() => NbdExportSettings.ParseListen("127.0.0.1:1\n0809")).Message);
    }

    [Theory]
    [InlineData("akka.remote.dot-netty.tcp.hostname")]
    [InlineData("akka.remote.dot-netty.tcp.public-hostname")]
    public void A_control_character_in_a_host_name_is_refused_naming_the_key(string key)
    {
        var refused = Assert.Throws<ConfigurationException>(() => ActorBlkRemoting.CheckSettings(Hocon($"{key} = \"127.0.0\\t.1\"")));
        Assert.Equal($"{key}: '127.0.0\\x09.1' holds a control character (U+0009), which this key never takes.", refused.Message);
    }

    // The binding check ActorBlk had: a host name with a newline was refused as an exposed address
    // and echoed over two lines; with TLS on it passed, and went into the node's address.
    [Fact]
    public void The_binding_check_refuses_a_host_name_with_a_control_character()
    {
        var refused = Assert.Throws<ConfigurationException>(() => ActorBlkRemoting.CheckBinding(Hocon("akka.remote.dot-netty.tcp { enable-ssl = on, hostname = \"node1\\n.example\" }")));
        Assert.Equal("akka.remote.dot-netty.tcp.hostname: 'node1\\x0a.example' holds a control character (U+000A), which this key never takes.", refused.Message);
    }

    // RFC 3986: a URI never holds a control character as such. .NET's Uri took one in the path,
    // and the export name carried it into the device's description and the log.
    [Fact]
    public void An_nbd_uri_with_a_control_character_is_refused_and_a_percent_encoded_one_stays_encoded_when_shown()
    {
        var refused = Assert.Throws<FormatException>(() => NbdUri.Parse("nbd://127.0.0.1:10809/disk\n0"));
        Assert.Equal("'nbd://127.0.0.1:10809/disk\\x0a0' holds a control character (U+000A), which a URI never holds as such (percent-encode it: %0A).", refused.Message);
        var refusedOption = Assert.Throws<DeviceOptionsException>(() => new DeviceOptions { Name = "n0", Driver = "nbd", Uri = "nbd://h/disk\t0" }.Validate());
        Assert.Equal("uri", refusedOption.Option);

        // The protocol allows any UTF-8 in an export name: written %0A, it is asked for as such.
        var encoded = NbdUri.Parse("nbd://127.0.0.1:10809/disk%0A0");
        Assert.Equal("disk\n0", encoded.Export);
        Assert.Equal("nbd://127.0.0.1:10809/disk%0A0", encoded.ToString());
    }

    // A C1 control character (U+0080 to U+009F) is two bytes in UTF-8: the refusal told to write
    // U+0085 as %85, which is no UTF-8, so the URI it suggested named the export "disk%850", not
    // the one asked for. It suggests the UTF-8 bytes, and what it suggests names that export.
    [Fact]
    public void The_percent_encoding_a_refusal_suggests_for_a_c1_control_character_is_its_utf8()
    {
        var refused = Assert.Throws<FormatException>(() => NbdUri.Parse("nbd://127.0.0.1:10809/disk\u00850"));
        Assert.Equal("'nbd://127.0.0.1:10809/disk\\x850' holds a control character (U+0085), which a URI never holds as such (percent-encode it: %C2%85).", refused.Message);
        var suggested = NbdUri.Parse("nbd://127.0.0.1:10809/disk%C2%850");
        Assert.Equal("disk\u00850", suggested.Export);
        Assert.Equal("nbd://127.0.0.1:10809/disk%C2%850", suggested.ToString());
    }
}
