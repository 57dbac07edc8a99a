using System.Net.Sockets;
using ActorBlk.Hardware.Drivers.Nbd;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// Opening an <c>nbd+unix://</c> device whose socket path is not a listening socket: each open
/// fails with one line that names the path and says what is there, as a user meets it (a server
/// killed, a typo, a directory given, permissions).
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class NbdClientUnixSocketSpec : IDisposable
{
    private readonly TempDirectory _dir = new("nbd-unix-fault");

    public void Dispose() => _dir.Dispose();

    private static string OpenError(string socket)
    {
        var error = Assert.Throws<IOException>(() => new NbdClientDriver(new NbdClientOptions { Uri = NbdUri.Parse($"nbd+unix:///?socket={socket}") }, "unix0"));
        Assert.DoesNotContain('\n', error.Message);
        return error.Message;
    }

    private static string Expected(string socket, string why) => $"cannot connect to nbd+unix:///?socket={socket}: {why}";

    // connect(2) fails with ECONNREFUSED on a path that is no socket: "Connection refused" sent the
    // user looking for a server when the path was wrong (found by an audit of the socket path's faults).
    [Fact]
    public void A_regular_file_or_a_directory_at_the_socket_path_is_named_as_such()
    {
        var file = _dir.CreateFile("disk.img", 4096);
        Assert.Equal(Expected(file, $"'{file}' is a regular file, not a socket"), OpenError(file));
        var directory = _dir.File("run");
        Directory.CreateDirectory(directory);
        Assert.Equal(Expected(directory, $"'{directory}' is a directory, not a socket"), OpenError(directory));
    }

    // A server killed (SIGKILL) leaves its socket file behind; connect(2) is refused. The socket
    // is bound and moved away before its listener closes, so .NET does not unlink it.
    [Fact]
    public void A_stale_socket_nobody_listens_on_says_so()
    {
        var stale = _dir.File("stale.sock");
        using (var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            var bound = _dir.File("bound.sock");
            listener.Bind(new UnixDomainSocketEndPoint(bound));
            listener.Listen();
            File.Move(bound, stale);
        }

        Assert.True(File.Exists(stale));
        Assert.Equal(Expected(stale, $"nothing listens on the socket '{stale}' (Connection refused: its server is not running, and the socket file is one it left behind)"), OpenError(stale));
    }

    // statx's ENOTDIR and EACCES were both reported as "No such file or directory": the check only
    // asked whether the path existed. Root searches any directory, so EACCES is met as nobody.
    [Fact]
    public void A_path_through_a_file_or_an_unsearchable_directory_names_the_real_error()
    {
        var file = _dir.CreateFile("disk.img", 4096);
        var through = Path.Combine(file, "kit.sock");
        Assert.Equal(Expected(through, $"cannot reach the socket '{through}' (Not a directory)"), OpenError(through));

        var locked = _dir.File("locked");
        Directory.CreateDirectory(locked);
        var socket = Path.Combine(locked, "kit.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(socket));
        listener.Listen();
        File.SetUnixFileMode(_dir.Path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.OtherExecute);
        File.SetUnixFileMode(locked, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.OtherRead);
        var error = string.Empty;
        Unprivileged.Run(() => error = OpenError(socket));
        Assert.Equal(Expected(socket, $"cannot reach the socket '{socket}' (Permission denied: a directory on its path is not searchable by this user)"), error);

        // The directory searchable, the socket file not writable: connect's own EACCES.
        File.SetUnixFileMode(locked, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.OtherExecute);
        File.SetUnixFileMode(socket, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.OtherRead);
        Unprivileged.Run(() => error = OpenError(socket));
        Assert.Equal(Expected(socket, $"no permission to connect to the socket '{socket}' (Permission denied: the socket file needs write permission)"), error);
    }

    [Fact]
    public void An_abstract_socket_nobody_listens_on_says_so()
    {
        var name = $"actorblk-none-{Guid.NewGuid():N}";
        Assert.Equal($"cannot connect to nbd+unix:///?socket=%00{name}: nothing listens on the abstract socket '\\x00{name}' (Connection refused)", OpenError($"%00{name}"));
    }
}
