"""The launch arguments both launch files share and the optional actions they switch on (``launch/*.launch.py``).

Shared arguments: ``namespace``, ``use_sim_time``, ``autostart``, ``camera_topic``, ``camera_info_topic``,
``loop_closure_topic``,
``rviz`` (start RViz with ``config/distilvpr.rviz``), ``bag`` (play a rosbag2 with ``ros2 bag play --clock``;
playing a bag also turns ``use_sim_time`` on), ``bag_rate`` and ``dds_profile`` (``large_frames``: the shipped
Fast DDS profile ``config/fastdds_large_frames.xml`` for 720p/1080p best-effort frames; or a profile file's
path). ``launch`` and ``launch_ros`` are imported inside the functions, so this module (and its tables, which the
tests check) imports without them.
"""

from __future__ import annotations

PACKAGE = "distilvpr_ros"
RVIZ_CONFIG = "distilvpr.rviz"  # under share/distilvpr_ros/config
DDS_PROFILES = {"large_frames": "fastdds_large_frames.xml"}  # dds_profile:=<name> -> share/distilvpr_ros/config
DDS_PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")  # Fast DDS 3.x, 2.x

#: ``(name, default, description)`` of the launch arguments both launch files declare.
COMMON_ARGUMENTS = [
    ("namespace", "", "namespace of the node and its topics"),
    ("use_sim_time", "false", "use /clock (bag replay with --clock); on whenever bag is set"),
    ("autostart", "true", "configure and activate the node at start-up (false: a lifecycle manager does it)"),
    ("camera_topic", "camera/image_raw", "sensor_msgs/Image input"),
    ("camera_info_topic", "camera/camera_info", "sensor_msgs/CameraInfo of the camera (intrinsics for verification)"),
    ("loop_closure_topic", "loop_closure", "loop closures [t_query, t_match]; e.g. lio_loop/loop_closure_detection"),
    ("rviz", "false", "start RViz with config/" + RVIZ_CONFIG),
    ("bag", "", "rosbag2 to play into the node (ros2 bag play --clock); empty: none"),
    ("bag_rate", "1.0", "playback rate of bag"),
    ("dds_profile", "", "Fast DDS profile for the node and the bag player: large_frames (shipped, for 720p/1080p "
                        "best-effort frames on one host) or a profile file; empty: the environment's"),
]

#: Node parameters set from the shared arguments: ``{parameter: launch argument}`` (both booleans).
COMMON_PARAMETERS = {"use_sim_time": "use_sim_time", "autostart": "autostart"}

#: Topic remappings of the shared arguments: ``(node topic, launch argument, suffix)``.
COMMON_REMAPPINGS = [
    ("camera/image_raw", "camera_topic", ""),
    ("camera/image_raw/compressed", "camera_topic", "/compressed"),
    ("camera/camera_info", "camera_info_topic", ""),
    ("loop_closure", "loop_closure_topic", ""),
]


def declare_arguments(specific: list[tuple[str, str, str]]) -> list:
    """``DeclareLaunchArgument`` for the shared arguments, then the launch file's own ``specific`` ones."""
    from launch.actions import DeclareLaunchArgument

    return [DeclareLaunchArgument(name, default_value=default, description=desc)
            for name, default, desc in COMMON_ARGUMENTS + list(specific)]


def config_file(name: str):
    """``share/distilvpr_ros/config/<name>`` as a substitution."""
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    return PathJoinSubstitution([FindPackageShare(PACKAGE), "config", name])


def common_parameters() -> dict:
    """``use_sim_time`` (true when asked for or when a bag is played) and ``autostart`` as typed values."""
    from launch.substitutions import LaunchConfiguration, PythonExpression
    from launch_ros.parameter_descriptions import ParameterValue

    sim_time = PythonExpression(["'", LaunchConfiguration("use_sim_time"), "'.lower() == 'true' or '",
                                 LaunchConfiguration("bag"), "' != ''"])
    return {"use_sim_time": ParameterValue(sim_time, value_type=bool),
            "autostart": ParameterValue(LaunchConfiguration(COMMON_PARAMETERS["autostart"]), value_type=bool)}


def common_remappings() -> list:
    from launch.substitutions import LaunchConfiguration

    return [(topic, [LaunchConfiguration(arg), suffix] if suffix else LaunchConfiguration(arg))
            for topic, arg, suffix in COMMON_REMAPPINGS]


def optional_actions() -> list:
    """RViz (``rviz:=true``, in the node's namespace so its relative topics match) and the bag player
    (``bag:=PATH``, publishing ``/clock``; a bag's topics are absolute: point the ``*_topic`` arguments at them)."""
    from launch.actions import ExecuteProcess
    from launch.conditions import IfCondition
    from launch.substitutions import LaunchConfiguration, PythonExpression
    from launch_ros.actions import Node

    bag = LaunchConfiguration("bag")
    rviz = Node(package="rviz2", executable="rviz2", name="distilvpr_rviz", namespace=LaunchConfiguration("namespace"),
                arguments=["-d", config_file(RVIZ_CONFIG)], output="screen",
                parameters=[{"use_sim_time": common_parameters()["use_sim_time"]}],
                condition=IfCondition(LaunchConfiguration("rviz")))
    player = ExecuteProcess(
        cmd=["ros2", "bag", "play", bag, "--clock", "--rate", LaunchConfiguration("bag_rate")],
        output="screen", condition=IfCondition(PythonExpression(["'", bag, "' != ''"])))
    return [rviz, player]


def environment_actions() -> list:
    """Before the node: point Fast DDS at the profile ``dds_profile`` names (a shipped one or a file), so the
    node and the bag player it starts use it. Nothing when the argument is empty."""
    from launch.actions import SetEnvironmentVariable
    from launch.conditions import IfCondition
    from launch.substitutions import LaunchConfiguration, PythonExpression

    name = LaunchConfiguration("dds_profile")
    shipped = [(key, config_file(file)) for key, file in DDS_PROFILES.items()]
    actions = []
    for variable in DDS_PROFILE_VARIABLES:
        for key, path in shipped:
            actions.append(SetEnvironmentVariable(variable, path, condition=IfCondition(
                PythonExpression(["'", name, f"' == '{key}'"]))))
        actions.append(SetEnvironmentVariable(variable, name, condition=IfCondition(
            PythonExpression(["'", name, "' not in ('', " + ", ".join(repr(k) for k in DDS_PROFILES) + ")"]))))
    return actions
